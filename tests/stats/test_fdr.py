"""BH without sorting: the binned counts (:func:`bids_vlm.stats.bhcount.bh_count`) and the
descent, the Simes p and the selective procedure row by row all give what the sort-based
computations they replace give, exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special

from bids_vlm.stats import bhcount, fdr
from bids_vlm.stats.fdr import (bh_count_values, bh_sorted, bh_z_thresholds,
                                   simes_and_selective, simes_rows, stage_two_rows)
from bids_vlm.stats.pvalues import p_from_z


def _bh_by_sorting(vals, zcrit):
    """Reference: sort |z| descending, the largest k with |z|_(k) >= zcrit[k - 1]."""
    ranked = np.sort(np.asarray(vals, np.float32))[::-1][:len(zcrit)]
    passed = np.flatnonzero(ranked >= zcrit[:len(ranked)])
    return int(passed.max()) + 1 if len(passed) else 0


def _cases(rng):
    """|z| (float32) of 600 tests: random mixtures, ties, all null, all significant, dense."""
    mix = np.abs(rng.standard_normal(600)) * rng.uniform(0.5, 4)
    ties = np.round(np.abs(rng.standard_normal(600)) * 3, 1)  # many exact ties
    at_thresholds = bh_z_thresholds(600, 0.05)[rng.integers(0, 600, 600)]  # on the edges
    return {"mixture": mix, "ties": ties, "at thresholds": at_thresholds,
            "all null": np.abs(rng.standard_normal(600)) * 0.5,
            "all significant": 8 + np.abs(rng.standard_normal(600)),
            "dense": np.abs(rng.standard_normal(600) + np.where(rng.random(600) < 0.4, 3.5, 0)),
            "empty": np.zeros(0)}


@pytest.mark.parametrize("seed", range(8))
def test_binned_bh_count_equals_sorted_bh(seed):
    rng = np.random.default_rng(seed)
    zcrit = bh_z_thresholds(600, 0.05).astype(np.float32)
    found = {}
    for name, vals in _cases(rng).items():
        vals = vals.astype(np.float32)
        found[name] = bh_count_values(vals, zcrit)
        assert found[name] == _bh_by_sorting(vals, zcrit), name
    assert found["all null"] == 0 and found["all significant"] == 600 and found["empty"] == 0
    assert 100 < found["dense"] < 600


@pytest.mark.parametrize("seed", range(4))
def test_bh_descent_equals_binned_count_or_gives_way(seed):
    """The descent from a bound (k <- #{z >= zcrit[k - 1]}) stops on BH's count, or says it
    did not settle (-1) and the caller counts in bins; a staircase needs one step per rank."""
    rng = np.random.default_rng(seed)
    zcrit = bh_z_thresholds(600, 0.05).astype(np.float32)
    cases = dict(_cases(rng), staircase=zcrit[1:41])  # #{z >= zcrit[k - 1]} = k - 1
    settled = 0
    for name, vals in cases.items():
        vals = np.ascontiguousarray(vals, np.float32)
        k = bhcount.bh_descend(vals.view(np.int32), np.int32(-1), zcrit.view(np.int32),
                               len(vals))
        assert k in (-1, _bh_by_sorting(vals, zcrit)), name
        settled += k >= 0
    assert bhcount.bh_descend(cases["staircase"].view(np.int32), np.int32(-1),
                              zcrit.view(np.int32), 40) == -1
    assert settled >= len(cases) - 2  # the staircase, and at most one other, give way


def test_bh_sorted_across_all_pairs_equals_sorting():
    """BH over many tests (--fdr-scope all) from candidates: the same as the sort it replaces."""
    rng = np.random.default_rng(4)
    n_tests = 100000
    z = np.abs(rng.standard_normal(20000) + np.where(rng.random(20000) < 0.3, 4.0, 0))
    vals = torch.from_numpy(z.astype(np.float32))
    keep, thr = bh_sorted(vals, n_tests, 0.05)
    ranks = np.arange(1, len(z) + 1)
    zcrit = (-special.ndtri(0.05 * ranks / n_tests / 2.0)).astype(np.float32)
    k = _bh_by_sorting(vals.numpy(), zcrit)
    assert k > 1000 and thr == float(zcrit[k - 1]) and int(keep.sum()) == k
    assert bh_sorted(vals[:0], n_tests, 0.05)[1] == float("inf")


def _selective_by_sorting(an, p, n_an, n_vox, q):
    """The sort-based implementation that :func:`simes_and_selective` replaced."""
    order = np.lexsort((p, an))
    a_s, p_s = an[order], p[order]
    starts = np.flatnonzero(np.r_[True, a_s[1:] != a_s[:-1]]) if len(a_s) else np.zeros(0, int)
    rank = np.arange(len(a_s)) - np.repeat(starts, np.diff(np.r_[starts, len(a_s)])) + 1
    simes = np.full(n_an, np.nan)
    if len(a_s):
        simes[a_s[starts]] = np.minimum.reduceat(n_vox * p_s / rank, starts)
    known = np.where(np.isfinite(simes), simes, np.inf)
    passed = np.flatnonzero(np.sort(known) <= q * np.arange(1, n_an + 1) / n_an)
    level = q * (int(passed.max()) + 1 if len(passed) else 0) / n_an
    ok = (known <= level)[a_s] & (p_s <= level * rank / n_vox)
    k_keep = np.zeros(n_an, np.int64)
    if len(a_s):
        k_keep[a_s[starts]] = np.maximum.reduceat(np.where(ok, rank, 0), starts)
    keep = np.zeros(len(an), bool)
    keep[order] = rank <= k_keep[a_s]
    thr = np.where(k_keep > 0, -special.ndtri(np.maximum(level * k_keep / n_vox, 1e-300) / 2.0),
                   np.inf)
    return keep, simes, thr.astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_selective_without_sorting_equals_sorting(seed):
    """Simes p, stage-2 BH and the entries kept, exactly, for ANs of many sizes (some without
    entries, some all tiny or zero p, ties), entries in any order or grouped by AN."""
    rng = np.random.default_rng(seed)
    n_an, n_vox = 40, 5000
    sizes = rng.integers(0, 400, n_an) * (rng.random(n_an) < 0.8)
    an = np.repeat(np.arange(n_an), sizes)
    p = 10.0 ** -rng.uniform(2.5, 12, len(an)) * rng.uniform(0, 1, n_an)[an]
    tie = rng.random(len(p)) < 0.2
    p[tie] = [float(f"{v:.1e}") for v in p[tie]]  # ties within and across ANs
    p[::97] = 0.0  # underflowed p (|z| > 37.5)
    p[an == 3] = 1e-200
    for grouped in (True, False):
        order = np.arange(len(an)) if grouped else rng.permutation(len(an))
        got = simes_and_selective(an[order], p[order], n_an, n_vox, 0.05)
        want = _selective_by_sorting(an[order], p[order], n_an, n_vox, 0.05)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])  # NaN where an AN has no entry
        np.testing.assert_array_equal(got[2], want[2])
    assert want[0].any() and not want[0].all() and np.isnan(want[1]).any()


def test_simes_and_stage_two_rows_on_dense_rows():
    """Rows of thousands of p (a dense layer): Simes p and stage-2 counts equal sorting."""
    rng = np.random.default_rng(9)
    counts = rng.integers(1000, 4000, 12)
    p = np.concatenate([np.sort(10.0 ** -rng.uniform(1.5, rng.uniform(3, 40), n)) for n in counts])
    p = np.concatenate([rng.permutation(part) for part in np.split(p, np.cumsum(counts)[:-1])])
    simes = simes_rows(p, counts, 20000)
    level = 0.05 * 0.7
    k_keep = stage_two_rows(p, counts, np.arange(12) != 5, level, 20000)
    for i, part in enumerate(np.split(p, np.cumsum(counts)[:-1])):
        ranked, rank = np.sort(part), np.arange(1, len(part) + 1)
        assert simes[i] == np.min(20000 * ranked / rank)
        passed = np.flatnonzero(ranked <= level * rank / 20000)
        assert k_keep[i] == (0 if i == 5 or not len(passed) else passed.max() + 1)
    assert k_keep.max() > 500
    assert np.isnan(simes_rows(p[:0], np.zeros(3, np.int64), 20000)).all()
    # a staircase (p just above each rank's limit: one descent step per rank) falls back to
    # the counts in bins, and a row that passes whole settles at once
    limits = level * np.arange(1, 41) / 20000
    rows = np.concatenate([np.nextafter(limits, 1), limits[:30]])
    assert list(stage_two_rows(rows, np.array([40, 30]), np.ones(2, bool), level, 20000)) == [0, 30]


def test_select_rows_equals_bh_select():
    """BH per row among candidates (compiled, with the Simes p) equals bh_select; the Simes p
    that of the discoveries' p."""
    rng = np.random.default_rng(6)
    b, n_vox = 9, 400
    zcrit = bh_z_thresholds(n_vox, 0.05).astype(np.float32)
    z_all = np.abs(rng.standard_normal((b, n_vox)) * rng.uniform(0.5, 2.5, (b, 1))
                   + np.where(rng.random((b, n_vox)) < 0.3, 3.0, 0)).astype(np.float32)
    rows, cols = np.nonzero(z_all >= 1.5)
    z = z_all[rows, cols]
    u = np.where(rng.random(len(z)) < 0.5, -1, 1).astype(np.float32) * (z ** 2 + 1)
    r = (z / 10).astype(np.float32)
    keep, thr = fdr.bh_select(torch.from_numpy(rows), torch.from_numpy(z), b,
                              torch.from_numpy(zcrit))
    cand = (rows.astype(np.int32), cols.astype(np.int32), u, r, z)
    per_an = (np.full(b, np.inf, np.float32), np.zeros(b, np.int64), np.zeros(b, np.int64),
              np.full(b, np.nan))
    out = tuple(np.zeros(len(z) + 3, d) for d in (np.int32, np.int32, np.float32, np.float32))
    m = fdr.select_rows(cand, len(z), zcrit, bhcount.rank_bins(
        zcrit.view(np.int32).astype(np.int64), bhcount.F32_SHIFT), n_vox, per_an, out, at=3)
    keep = keep.numpy()
    assert 0 < m == keep.sum() < len(z)
    rows_out, cols_out, r_out, z_out = (a[3:3 + m] for a in out)
    np.testing.assert_array_equal(rows_out, rows[keep])
    np.testing.assert_array_equal(cols_out, cols[keep])
    np.testing.assert_array_equal(z_out, np.sign(u[keep]) * z[keep])
    np.testing.assert_array_equal(r_out, np.sign(u[keep]) * r[keep])
    p = p_from_z(z[keep])
    np.testing.assert_array_equal(per_an[0], thr.numpy())
    np.testing.assert_array_equal(per_an[1] + per_an[2], np.bincount(rows[keep], minlength=b))
    counts = np.bincount(rows[keep], minlength=b)
    np.testing.assert_array_equal(per_an[3], simes_rows(p, counts, n_vox))


def _layer(seed=0, n_frames=300, n_an=48, n_vox=500, n_latent=6):
    """A dense planted layer: ANs mix a few smooth latent courses plus their own noise; a third
    of the voxels carry other mixtures of the same latents."""
    rng = np.random.default_rng(seed)
    latent = np.cumsum(rng.standard_normal((n_frames, n_latent)), 0)
    latent = np.apply_along_axis(lambda c: np.convolve(c, np.ones(6) / 6, "same"), 0, latent)
    latent = (latent - latent.mean(0)) / latent.std(0)
    x = latent @ rng.standard_normal((n_latent, n_an)) / np.sqrt(n_latent)
    x += rng.standard_normal((n_frames, n_an))
    y = rng.standard_normal((n_frames, n_vox))
    y[:, :n_vox // 3] += 0.6 * latent @ rng.standard_normal((n_latent, n_vox // 3))
    return x, y


@pytest.mark.parametrize("scope", ["an", "selective"])
def test_dense_layer_equals_the_dense_reference(scope):
    """A dense planted layer (a large share of pairs significant) through the streamed
    association: exactly the pairs of BH per AN (or of the selective procedure) on the dense
    float64 z of :func:`association_z`, and the same |z|."""
    from bids_vlm.stats import associate
    from bids_vlm.stats.association import association_z

    x, y = _layer()
    runs = [150, 150]
    z = association_z(x, y, run_lengths=runs, n_lags=10)
    p = 2 * special.ndtr(-np.abs(z))
    sig = np.zeros_like(p, dtype=bool)  # BH per AN by sorting
    for i, row in enumerate(p):
        ranked = np.sort(row)
        passed = np.flatnonzero(ranked <= 0.05 * np.arange(1, len(row) + 1) / len(row))
        if len(passed):
            sig[i] = row <= ranked[passed.max()]
    if scope == "selective":
        an, vox = np.nonzero(sig)
        keep, _, _ = _selective_by_sorting(an, p[an, vox], x.shape[1], y.shape[1], 0.05)
        sig = np.zeros_like(sig)
        sig[an[keep], vox[keep]] = True
    res = associate(x, y, run_lengths=runs, n_lags=10, block_size=16, fdr_scope=scope)
    assert 0.1 < sig.mean() < 0.35  # a dense regime
    assert set(zip(res.an_index.tolist(), res.voxel_index.tolist())) == set(zip(*np.nonzero(sig)))
    np.testing.assert_allclose(res.z, z[res.an_index, res.voxel_index], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(res.bn_count, sig.sum(0))
