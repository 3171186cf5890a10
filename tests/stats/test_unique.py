"""--bn-definition unique: stimulus presence and a layer's shared components are no AN's BNs,
the planted AN wins among correlated ANs, the null stays calibrated; the projection of the
prepared voxels equals preparing the residualised voxels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_vlm.stats import associate, prepare_voxels
from bids_vlm.stats.unique import (layer_association, mean_abs_r, nuisance_basis,
                                      project_voxels, removed_share, residualise)
from bids_vlm.simulate import Design, activations, event_design, session

V = 1000


def _run(s, definition, n_pcs=3, q=0.05, fdr_scope="selective"):
    args = s.association_args()
    vox = prepare_voxels(s.voxels, **args)
    res, share = layer_association(s.regressors, vox, s.presence, definition, n_pcs,
                                   noise_sums=s.noise_sums, lag_traces=s.lag_traces,
                                   run_lengths=s.run_lengths, n_removed=s.n_removed, q=q,
                                   fdr_scope=fdr_scope)
    return res, share


def test_basis_is_orthonormal_and_residuals_lose_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 30)) + 3 * rng.standard_normal((120, 1))  # one shared factor
    pres = rng.standard_normal(120)
    basis = nuisance_basis(x, pres, 3)
    assert basis.shape == (120, 4)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-10)
    own = residualise(x, basis)
    np.testing.assert_allclose(basis.T @ own, 0, atol=1e-4)
    share = removed_share(x, own)
    assert share.min() > 0.5  # the shared factor was most of every AN's variance
    assert 0.7 < mean_abs_r(x).mean() < 1 and mean_abs_r(own).mean() < 0.3
    assert nuisance_basis(np.ones((50, 3)), np.ones(50), 2).shape == (50, 0)  # nothing varies


def test_projected_voxels_equal_voxels_residualised_then_prepared():
    s = session(np.random.default_rng(1), Design(n_frames=150), 300, n_an=12)
    basis = nuisance_basis(s.regressors, None, 2)
    args = s.association_args()
    projected = project_voxels(prepare_voxels(s.voxels, **args), basis, s.noise_sums,
                               s.lag_traces)
    res = associate(residualise(s.regressors, basis), projected, q=1 - 1e-9,
                    fdr_scope="an", **dict(args, n_removed=s.n_removed + 2))
    from bids_vlm.stats.association import association_z
    from bids_vlm.stats.unique import lag_traces_of

    z = association_z(residualise(s.regressors, basis), residualise(s.voxels, basis),
                      run_lengths=s.run_lengths, n_removed=s.n_removed + 2,
                      noise_sums=s.noise_sums,
                      lag_traces=s.lag_traces - lag_traces_of(basis, s.run_lengths,
                                                               len(s.lag_traces) - 1))
    np.testing.assert_allclose(res.z, z[res.an_index, res.voxel_index], rtol=1e-3, atol=1e-3)


def test_projection_into_scratch_reuses_its_arrays_and_equals_a_new_one():
    """project_voxels with a scratch dict (the association stage's, layer after layer): the
    same voxels as into new arrays, written into the arrays the first call kept."""
    s = session(np.random.default_rng(2), Design(n_frames=150), 200, n_an=12)
    prepared, scratch, pointers = prepare_voxels(s.voxels, **s.association_args()), {}, []
    for seed, n_pcs in ((0, 2), (1, 3)):  # two layers, bases of different widths
        basis = nuisance_basis(s.regressors[:, seed:], None, n_pcs)
        new = project_voxels(prepared, basis, s.noise_sums, s.lag_traces)
        kept = project_voxels(prepared, basis, s.noise_sums, s.lag_traces, scratch)
        assert torch.equal(kept.y, new.y) and torch.equal(kept.acf, new.acf)
        assert kept.n_dof == new.n_dof
        pointers.append((kept.y.data_ptr(), kept.acf.data_ptr()))
    assert pointers[0] == pointers[1] == (scratch["y"].data_ptr(), scratch["acf"].data_ptr())
    assert not torch.equal(prepared.y, kept.y)  # the prepared voxels are left as they were


def test_presence_only_voxels_are_no_ans_bn():
    """Images 4 s on / 8 s off, AN activations with a positive mean: 50 of 1000 voxels respond
    to stimulus presence only. Marginal r makes them BNs of almost every AN; unique makes them
    BNs of at most q of the ANs (+ 3 binomial SE)."""
    rng = np.random.default_rng(3)
    acts, on = event_design(rng, 800, 50)

    def plant(x):  # x's last column: the presence response
        y = np.zeros((x.shape[0], V))
        y[:, :50] = 0.5 * x[:, [-1]]
        return y

    s = session(rng, Design(), V, acts=acts, signal=plant, on=on)
    unique, share = _run(s, "unique")
    marginal, none = _run(s, "marginal")
    share_unique = np.unique(unique.an_index[unique.voxel_index < 50]).size / 50
    share_marginal = np.unique(marginal.an_index[marginal.voxel_index < 50]).size / 50
    assert share_marginal > 0.8, share_marginal  # measured 0.98
    assert share_unique <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 50), share_unique  # measured 0
    assert none is None and share.mean() > 0.3  # presence explained much of each AN


def test_planted_an_wins_among_correlated_ans():
    """Half of every AN's variance from 3 shared factors (mean inter-AN r about 0.5); 20 of
    100 ANs each drive 20 voxels (r = 0.3 with the full regressor). Marginal: most discoveries
    belong to other ANs; unique: the planted AN is the one reported (wrong-AN share <= q + 3 SE
    of the discoveries)."""
    owner = np.full(V, -1)
    owner[:400] = np.repeat(np.arange(20), 20)
    beta = 0.3 / np.sqrt(1 - 0.09)

    def plant(x):
        y = np.zeros((x.shape[0], V))
        y[:, :400] = beta * x[:, owner[:400]]
        return y

    rng = np.random.default_rng(4)
    s = session(rng, Design(), V, acts=activations(rng, 800, 100, shared=0.5), signal=plant)
    wrong = {}
    for definition in ("marginal", "unique"):
        res, _ = _run(s, definition)
        true = owner[res.voxel_index] == res.an_index
        wrong[definition] = (~true).mean(), len(true), np.unique(res.an_index[true]).size
    assert wrong["marginal"][0] > 0.5, wrong  # measured 0.74
    frac, n, found = wrong["unique"]
    assert n >= 10 and frac <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / n), wrong
    assert found >= 5, wrong  # some planted ANs still found on their own part


@pytest.mark.parametrize("noise", ["ar1:0.6"])
def test_null_stays_calibrated_after_residualising(noise):
    """Voxelwise FPR at 0.05 with presence and 3 PCs removed from both sides (AR(1) 0.6, 24
    confounds per 150-frame run): in [0.04, 0.06] (binomial SE 0.0013 for 30,000 pairs)."""
    hits = n = 0
    for seed in range(2):
        rng = np.random.default_rng(20 + seed)
        acts, on = event_design(rng, 600, 30)
        s = session(rng, Design(n_frames=150, n_confounds=24, noise=noise), 500, acts=acts,
                    on=on)
        res, _ = _run(s, "unique", q=1 - 1e-9, fdr_scope="an")
        hits, n = hits + int((res.p < 0.05).sum()), n + res.p.size
    assert 0.04 <= hits / n <= 0.06, hits / n


@pytest.mark.parametrize("shape", [(60, 200), (200, 60)])
def test_top_components_from_the_gram_equal_the_svds(shape):
    """Wide and tall layers: the Gram's components are the SVD's (up to sign)."""
    from bids_vlm.stats.unique import top_components

    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape) @ np.diag(np.linspace(3, 1, shape[1]))
    x[:, :5] += 4 * rng.standard_normal((shape[0], 1))
    x -= x.mean(0)
    got = top_components(x, 3)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    want = u[:, :3] * sv[:3]
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-8 * sv[0])
    np.testing.assert_allclose(np.sign(got[0]) * got, np.sign(want[0]) * want,
                               atol=1e-8 * sv[0])


def test_top_components_near_rank_deficiency_come_from_the_svd():
    """A layer of rank 2 (or of 2 ANs) gives 2 components, not a third from rounding."""
    from bids_vlm.stats.unique import top_components

    rng = np.random.default_rng(3)
    for x in (rng.standard_normal((80, 2)),
              rng.standard_normal((80, 2)) @ rng.standard_normal((2, 40))):
        x = x - x.mean(0)
        got = top_components(x, 3)
        assert got.shape == (80, 2)
        u, sv, _ = np.linalg.svd(x, full_matrices=False)
        np.testing.assert_allclose(np.abs(got), np.abs(u[:, :2] * sv[:2]), atol=1e-9 * sv[0])
