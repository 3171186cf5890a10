"""AN x voxel association: streamed blocks equal a dense reference, the autocorrelation
correction is calibrated on simulated BOLD, BH controls the FDR, degenerate columns are harmless."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats

from bids_vlm.stats import associate, bh_z_thresholds
from bids_vlm.stats.autocorr import autocorrelations, default_lags, tukey_taper
from bids_vlm.stats.fdr import bh_select
from bids_vlm.stats.pvalues import p_from_z
from bids_vlm.design.regressors import convolution_matrix, frame_times, zscore

RUNS = [150, 150]


def _acf_numpy(x, runs, n_lags):
    """Reference autocorrelations: loops over runs and lags in numpy."""
    num, den, start = np.zeros((n_lags, x.shape[1])), np.zeros(x.shape[1]), 0
    for length in runs:
        seg = x[start:start + length] - x[start:start + length].mean(0)
        den += (seg ** 2).sum(0)
        for k in range(1, n_lags + 1):
            num[k - 1] += (seg[:-k] * seg[k:]).sum(0)
        start += length
    return num / den


def _dense(x, y, q, runs=None, n_lags=None):
    """Reference z, p and BH decisions for every pair, with numpy and scipy only."""
    r = np.corrcoef(x.T, y.T)[:x.shape[1], x.shape[1]:]
    n = x.shape[0]
    t_eff = np.full(r.shape, float(n))
    if runs is not None:
        w2 = tukey_taper(n_lags) ** 2
        factor = 1 + 2 * (_acf_numpy(x, runs, n_lags) * w2[:, None]).T @ _acf_numpy(y, runs, n_lags)
        t_eff = n / np.clip(factor, 1.0, n / 4)
    z = np.arctanh(r) * np.sqrt(t_eff - 3)
    p = 2 * special.ndtr(-np.abs(z))
    sig = np.array([stats.false_discovery_control(row) <= q for row in p])
    return r, z, sig


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 20))
    y = rng.standard_normal((300, 60))
    y[:, :10] += 0.4 * x[:, [0]]
    y[:, 10:15] -= 0.3 * x[:, [5]]
    return x, y


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="needs a CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("block", [1, 64])
def test_exact_streamed_equals_dense_reference(problem, block, device):
    """The exact null variance: the streamed association's z and discoveries equal the dense
    z of :func:`association_z` (its factors) and BH per AN over them."""
    from bids_vlm.stats.association import association_z

    x, y = problem
    rng = np.random.default_rng(5)
    sums = np.abs(rng.standard_normal((13, y.shape[1]))) * 10.0 + 100.0  # any lag sums
    traces = np.linspace(290, 200, 13)
    z = association_z(x, y, run_lengths=RUNS, n_lags=12, noise_sums=sums, lag_traces=traces)
    sig = np.array([stats.false_discovery_control(2 * special.ndtr(-np.abs(row))) <= 0.05
                    for row in z])
    res = associate(x, y, q=0.05, block_size=block, run_lengths=RUNS, n_lags=12,
                    noise_sums=sums, lag_traces=traces, device=device)
    assert 10 < sig.sum() < sig.size / 2
    assert set(zip(res.an_index.tolist(), res.voxel_index.tolist())) == set(zip(*np.nonzero(sig)))
    np.testing.assert_allclose(res.z, z[res.an_index, res.voxel_index], rtol=1e-4, atol=1e-4)


def test_exact_variance_matches_its_formula():
    """Var(r) = (1 + 2 sum_k rho_x(k) w_k rho_S(k)) / (m_0 + 2 sum_k w_k rho_S(k) m_k), from
    the lag sums of the voxel's uncleaned series and the cleaning's traces (numpy reference)."""
    from bids_vlm.stats.association import association_z

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((100, 3)), rng.standard_normal((100, 4))
    sums = np.vstack([np.full(4, 50.0), rng.uniform(-20, 40, (5, 4))])
    traces = np.array([90.0, -3, -2, -1, -0.5, -0.2])
    z = association_z(x, y, run_lengths=[100], n_lags=5, noise_sums=sums, lag_traces=traces)
    w = tukey_taper(5)
    rho_s = sums[1:] / sums[0]
    rho_x = _acf_numpy(x, [100], 5)
    var = (1 + 2 * rho_x.T @ (w[:, None] * rho_s)) / (90 + 2 * (w[:, None] * rho_s
                                                                * traces[1:, None]).sum(0))
    r = np.corrcoef(x.T, y.T)[:3, 3:]
    np.testing.assert_allclose(z, np.arctanh(r) * np.sqrt(1 / var - 3), rtol=1e-4)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("autocorr", ["none", "bartlett"])
@pytest.mark.parametrize("block", [1, 7, 64])
def test_streamed_equals_dense(problem, block, autocorr, device):
    x, y = problem
    extra = {"runs": RUNS, "n_lags": 12} if autocorr == "bartlett" else {}
    r, z, sig = _dense(x, y, 0.05, **extra)
    res = associate(x, y, q=0.05, block_size=block, run_lengths=RUNS, autocorr=autocorr,
                    n_lags=12, device=device)
    np.testing.assert_array_equal(res.n_pos, (sig & (r > 0)).sum(1))
    np.testing.assert_array_equal(res.n_neg, (sig & (r < 0)).sum(1))
    np.testing.assert_array_equal(res.bn_count, sig.sum(0))
    peak = np.abs(r).argmax(1)
    np.testing.assert_array_equal(res.peak_voxel, peak)
    np.testing.assert_allclose(res.peak_r, r[np.arange(len(r)), peak], atol=1e-5)
    np.testing.assert_allclose(res.best_r, r[np.abs(r).argmax(0), np.arange(r.shape[1])],
                               atol=1e-5)
    assert set(zip(res.an_index.tolist(), res.voxel_index.tolist())) == set(zip(*np.nonzero(sig)))
    np.testing.assert_allclose(res.r, r[res.an_index, res.voxel_index], atol=1e-5)
    np.testing.assert_allclose(res.z, z[res.an_index, res.voxel_index], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.p, p_from_z(z[res.an_index, res.voxel_index]), rtol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_best_r_of_tied_ans_is_the_positive_r_in_any_block_order(problem, fused, monkeypatch):
    """An AN and its negative (r and -r at every voxel), in one block or in blocks that other
    workers scan: each voxel's best_r is the positive r, whichever AN came first."""
    from bids_vlm.stats import backends

    x, y = problem
    if not fused:  # the torch (CUDA) operations, on the CPU
        monkeypatch.setitem(backends.BACKENDS, "cpu", backends.Backend(
            "cpu", tile=256, prep_chunk=256, compiled=False))
    r = np.corrcoef(x[:, :3].T, y.T)[:3, 3:]  # (3, V): AN 0 (and its negative), ANs 1-2
    wins = np.abs(r[0]) >= np.abs(r[1:]).max(0)  # voxels where the tied pair has the top |r|
    want = np.where(wins, np.abs(r[0]), r[1 + np.abs(r[1:]).argmax(0), np.arange(r.shape[1])])
    assert 10 < wins.sum() < len(wins)
    for first, second in ((x[:, [0]], -x[:, [0]]), (-x[:, [0]], x[:, [0]])):
        for block, workers in ((4, 1), (2, 2), (1, 2)):
            res = associate(np.hstack([first, x[:, 1:3], second]), y, block_size=block,
                            workers=workers, run_lengths=RUNS, n_lags=12)
            np.testing.assert_allclose(res.best_r, want, atol=1e-5)
            assert (res.best_r[wins] > 0).all()


def test_candidate_cap_tightens_the_bound_first(problem, monkeypatch):
    """With room for almost no candidates, counting passes tighten BH's bound before the
    entries are read back: same discoveries."""
    from bids_vlm.stats import blockscan

    x, y = problem
    expected = associate(x, y, block_size=7, run_lengths=RUNS, n_lags=12, autocorr="bartlett")
    monkeypatch.setattr(blockscan, "CANDIDATE_FRACTION", 1e-4)
    capped = associate(x, y, block_size=7, run_lengths=RUNS, n_lags=12, autocorr="bartlett")
    np.testing.assert_array_equal(capped.an_index, expected.an_index)
    np.testing.assert_array_equal(capped.voxel_index, expected.voxel_index)
    np.testing.assert_array_equal(capped.z_threshold, expected.z_threshold)
    assert len(expected.r) > 10


@pytest.mark.parametrize("autocorr", ["none", "bartlett"])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_fdr_across_all_pairs_equals_dense(problem, autocorr, device):
    """--fdr-scope all: one BH over every AN x voxel pair, streamed in two passes."""
    x, y = problem
    extra = {"runs": RUNS, "n_lags": 12} if autocorr == "bartlett" else {}
    r, z, _ = _dense(x, y, 0.05, **extra)
    sig = (stats.false_discovery_control(2 * special.ndtr(-np.abs(z)).ravel()) <= 0.05)
    sig = sig.reshape(z.shape)
    res = associate(x, y, q=0.05, block_size=7, run_lengths=RUNS, autocorr=autocorr,
                    n_lags=12, fdr_scope="all", device=device)
    assert sig.sum() > 10 and sig.sum(1).min() == 0  # discoveries, not in every AN
    assert set(zip(res.an_index.tolist(), res.voxel_index.tolist())) == set(zip(*np.nonzero(sig)))
    np.testing.assert_array_equal(res.n_pos, (sig & (r > 0)).sum(1))
    np.testing.assert_array_equal(res.bn_count, sig.sum(0))
    np.testing.assert_allclose(res.z, z[res.an_index, res.voxel_index], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(res.peak_voxel, np.abs(r).argmax(1))
    assert np.all(res.z_threshold == res.z_threshold[0])
    assert np.abs(res.z).min() >= res.z_threshold[0]


def test_fdr_across_all_pairs_is_more_liberal_for_a_weak_an():
    """AN 0 drives half the voxels, AN 3 one voxel at z = 3.4 (p 7e-4): BH per AN over 200
    voxels needs p <= 2.5e-4 for it, BH over all pairs about 0.05 * 101 / 4000 = 1.3e-3."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 20))
    y = rng.standard_normal((300, 200))
    y[:, :100] += x[:, [0]]
    xc = (x[:, 3] - x[:, 3].mean()) / np.linalg.norm(x[:, 3] - x[:, 3].mean())
    e = y[:, 150] - y[:, 150].mean()
    e -= (e @ xc) * xc
    r = np.tanh(3.4 / np.sqrt(297))
    y[:, 150] = r * xc + np.sqrt(1 - r * r) * e / np.linalg.norm(e)
    per_an, across = (associate(x, y, autocorr="none", fdr_scope=scope) for scope in ("an", "all"))
    assert (3, 150) in zip(across.an_index.tolist(), across.voxel_index.tolist())
    assert (3, 150) not in zip(per_an.an_index.tolist(), per_an.voxel_index.tolist())
    assert across.n_pos[0] >= 100 and per_an.n_pos[0] >= 100


def test_fdr_across_all_pairs_without_discoveries():
    rng = np.random.default_rng(5)
    res = associate(rng.standard_normal((100, 4)), rng.standard_normal((100, 30)), q=1e-6,
                    fdr_scope="all")
    assert len(res.r) == 0 and res.bn_count.sum() == 0 and np.isinf(res.z_threshold).all()


def test_autocorrelations_match_numpy_and_stay_within_runs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 4)).cumsum(0)
    got = autocorrelations(torch.from_numpy(x), RUNS, 5).numpy()
    np.testing.assert_allclose(got, _acf_numpy(x, RUNS, 5), rtol=1e-5, atol=1e-6)
    # a jump between runs is not a lag: each run on its own has the same ACF
    shifted = x.copy()
    shifted[150:] += 1000.0
    np.testing.assert_allclose(autocorrelations(torch.from_numpy(shifted), RUNS, 5).numpy(),
                               got, rtol=1e-4, atol=1e-5)
    assert default_lags([150, 200]) == 24


def _ar1(rng, n, v, phi):
    e = rng.standard_normal((n, v))
    y = np.empty_like(e)
    y[0] = e[0] / np.sqrt(1 - phi ** 2)
    for t in range(1, n):
        y[t] = phi * y[t - 1] + e[t]
    return y


def _smooth_regressors(rng, n_scans, n, tr=2.0, hold=3):
    """HRF-convolved activations that change every ``hold`` seconds, z-scored (like AN
    regressors)."""
    seconds = int(n_scans * tr)
    acts = np.repeat(rng.standard_normal((seconds // hold + 1, n)), hold, axis=0)[:seconds]
    return zscore(convolution_matrix(np.arange(seconds), 1.0, frame_times(n_scans, tr)) @ acts)


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(0)
    x = np.concatenate([_smooth_regressors(rng, n, 200) for n in RUNS])
    noise = np.concatenate([_ar1(rng, n, 2000, 0.6) for n in RUNS])
    return rng, x, noise


def _pvalues(x, y, autocorr):
    res = associate(x, y, q=1.0 - 1e-9, run_lengths=RUNS, autocorr=autocorr)  # keep every entry
    return res.p


def test_null_is_calibrated_for_autocorrelated_bold(simulated):
    """AR(1) phi 0.6 noise, smooth regressors, no signal: voxelwise FPR at 0.05."""
    _, x, noise = simulated
    fpr = (_pvalues(x, noise, "bartlett") < 0.05).mean()
    naive = (_pvalues(x, noise, "none") < 0.05).mean()
    assert 0.03 <= fpr <= 0.07, fpr  # measured 0.0527
    assert naive > 0.15, naive  # measured 0.2001: the naive test is far off


def test_null_is_calibrated_after_cleaning_with_many_confounds(simulated):
    """The same null after both sides were cleaned like bids_vlm cleans them, with 12 confounds
    per run (motion and derivatives): the dimensions the cleaning removed are counted in the
    degrees of freedom. (With 25 confounds per 150 frames the FPR is 0.073 counted, 0.112 not:
    still a little liberal when a fifth of the dimensions are removed.)"""
    import warnings

    from bids_vlm.design.cleaning import clean_signals, removed_dimensions

    rng, x, noise = simulated
    cleaned_x, cleaned_y, removed = [], [], 0
    for a, b in zip(np.cumsum([0] + RUNS[:-1]), np.cumsum(RUNS)):
        conf = rng.standard_normal((b - a, 12))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cleaned_x.append(clean_signals(x[a:b], 2.0, conf))
            cleaned_y.append(clean_signals(noise[a:b], 2.0, conf))
        removed += removed_dimensions(b - a, 2.0, conf)
    x_c, y_c = np.concatenate(cleaned_x), np.concatenate(cleaned_y)
    res = associate(x_c, y_c, q=1.0 - 1e-9, run_lengths=RUNS, n_removed=removed)
    fpr = (res.p < 0.05).mean()
    ignored = (associate(x_c, y_c, q=1.0 - 1e-9, run_lengths=RUNS).p < 0.05).mean()
    assert removed == 2 * (12 + 2 + 4)  # per run: confounds, mean, trend, 4 cosines (300 s)
    assert 0.03 <= fpr <= 0.07, fpr  # measured 0.066
    assert ignored > fpr + 0.01, (ignored, fpr)  # counting T frames is liberal: 0.085


def test_fdr_and_sensitivity_with_planted_signal(simulated):
    """Each of the 200 ANs drives its own 10 of the 2000 voxels (r about 0.5): realised FDR
    (false discoveries / discoveries, averaged over ANs) and sensitivity."""
    _, x, noise = simulated
    owner = np.repeat(np.arange(200), 10)  # voxel v carries AN owner[v]
    y = noise + 0.6 * np.std(noise) * x[:, owner]
    res = associate(x, y, q=0.05, run_lengths=RUNS)
    true = owner[res.voxel_index] == res.an_index
    fdp = [(~true[res.an_index == i]).mean() if (res.an_index == i).any() else 0.0
           for i in range(200)]
    sensitivity = true.sum() / 2000
    assert np.mean(fdp) <= 0.06, np.mean(fdp)  # measured 0.053
    assert sensitivity >= 0.9, sensitivity  # measured 0.998


def test_bh_select_equals_sorting():
    rng = np.random.default_rng(3)
    absz = torch.from_numpy(np.abs(rng.standard_normal((300, 500)) * rng.uniform(0.5, 3, (300, 1))))
    absz = absz.float()
    zcrit = torch.from_numpy(bh_z_thresholds(500, 0.1).astype(np.float32))
    ranked = absz.sort(1, descending=True).values >= zcrit
    expected = torch.where(ranked.any(1), 500 - ranked.flip(1).int().argmax(1), 0)
    cand_rows, cand_cols = torch.nonzero(absz >= 1.0, as_tuple=True)  # a superset of candidates
    keep, thr = bh_select(cand_rows, absz[cand_rows, cand_cols], 300, zcrit)
    rows, cols = cand_rows[keep], cand_cols[keep]
    assert torch.equal(torch.bincount(rows, minlength=300), expected)
    assert expected.min() == 0 and expected.max() > 10
    for row in (int(expected.argmax()), int(expected.argmin())):  # the top-k |z| of the row
        top = set(absz[row].argsort(descending=True)[:int(expected[row])].tolist())
        assert set(cols[rows == row].tolist()) == top
    assert torch.isinf(thr[expected == 0]).all()


def test_bh_thresholds_decrease_with_rank():
    thr = bh_z_thresholds(1000, 0.05)
    assert np.all(np.diff(thr) < 0)
    assert thr[0] == pytest.approx(stats.norm.isf(0.05 / 1000 / 2))


def test_constant_columns_are_never_significant():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    x[:, 1] = 4.0
    y = rng.standard_normal((50, 5))
    y[:, 2] = -1.0
    y[:, 0] += 3 * x[:, 0]
    res = associate(x, y, autocorr="none")
    assert res.n_pos[1] == res.n_neg[1] == 0 and res.bn_count[2] == 0
    assert res.bn_count[0] >= 1


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="frames"):
        associate(np.zeros((10, 2)), np.zeros((11, 3)))
    with pytest.raises(ValueError, match="add up"):
        associate(np.zeros((10, 2)), np.zeros((10, 3)), run_lengths=[4, 5])
    with pytest.raises(ValueError, match="autocorr"):
        associate(np.zeros((10, 2)), np.zeros((10, 3)), autocorr="magic")
    with pytest.raises(ValueError, match="fdr_scope"):
        associate(np.zeros((10, 2)), np.zeros((10, 3)), fdr_scope="voxel")


def test_memory_bound_and_block_size():
    from bids_vlm.stats import block_size_for_memory, memory_bound

    bound = memory_bound(1000, 60000, 200000, 256)
    assert bound > 8 * 1000 * 260000  # at least the inputs and their normalised copies
    block = block_size_for_memory(bound, 1000, 60000, 200000)
    assert block == 256 or memory_bound(1000, 60000, 200000, block + 1) > bound
    assert memory_bound(1000, 60000, 200000, block) <= bound
    with pytest.raises(MemoryError, match="too little"):
        block_size_for_memory(2**20, 1000, 60000, 200000)


def test_voxels_prepared_once_give_the_same_result(problem):
    """prepare_voxels once for several layers: the same association as from the array."""
    from bids_vlm.stats import prepare_voxels

    x, y = problem
    prepared = prepare_voxels(y, run_lengths=RUNS, n_lags=12, n_removed=4)
    for cols in (slice(0, 8), slice(8, 20)):  # two "layers"
        direct = associate(x[:, cols], y, block_size=3, run_lengths=RUNS, n_lags=12,
                           n_removed=4)
        again = associate(x[:, cols], prepared, block_size=3, run_lengths=RUNS, n_lags=12,
                          n_removed=4)
        for name in ("n_pos", "n_neg", "peak_voxel", "bn_count", "an_index", "voxel_index"):
            np.testing.assert_array_equal(getattr(again, name), getattr(direct, name))
        np.testing.assert_allclose(again.z, direct.z, rtol=1e-6)
        if cols.start == 0:  # the planted ANs are found
            assert again.n_pos[0] >= 8 and again.n_neg[5] >= 3
    with pytest.raises(ValueError, match="prepared for"):
        associate(x, prepared, run_lengths=RUNS, n_lags=12)  # other degrees of freedom
    with pytest.raises(ValueError, match="prepared for"):
        associate(x, prepared, run_lengths=RUNS, autocorr="none", n_removed=4)


def test_entry_buffers_reused_across_layers_give_each_layers_result(problem):
    """The association stage's EntryBuffers, reused from layer to layer: each layer's entries
    as with arrays of its own (a larger layer after a smaller one grows them), views of the
    buffers; p is that of z."""
    from bids_vlm.stats import prepare_voxels
    from bids_vlm.stats.entries import EntryBuffers

    x, y = problem
    prepared, buffers = prepare_voxels(y, run_lengths=RUNS, n_lags=12), EntryBuffers()
    for cols in (slice(0, 4), slice(0, 20), slice(4, 12)):  # small, large, smaller layers
        own = associate(x[:, cols], prepared, block_size=3, run_lengths=RUNS, n_lags=12)
        shared = associate(x[:, cols], prepared, block_size=3, run_lengths=RUNS, n_lags=12,
                           entries=buffers)
        for name in ("n_pos", "n_neg", "bn_count", "p_an", "an_index", "voxel_index", "r", "z"):
            np.testing.assert_array_equal(getattr(shared, name), getattr(own, name))
        assert np.shares_memory(shared.z, buffers.arrays[3]) and len(shared.z) > 0
        np.testing.assert_array_equal(shared.p, p_from_z(shared.z))


# --- calibration on simulated BOLD with the nuisance structure of real data ---------------------
# (bids_vlm.simulate: AR(1) noise, random-walk confounds, HRF-smoothed dense AN regressors,
# both sides cleaned as the pipeline cleans them.) The pairs of one simulation are close to
# independent under the null (independent voxels and ANs), so the binomial standard error of an
# FPR over n pairs is sqrt(p (1 - p) / n); the bounds below are the targets, which are
# wider than 4 such errors.


def _null_fpr(design, n_vox, n_an, seeds, autocorr, n_lags=None):
    from bids_vlm.simulate import session

    hits = n = 0
    for seed in seeds:
        s = session(np.random.default_rng(seed), design, n_vox, n_an=n_an)
        res = associate(s.regressors, s.voxels, q=1.0 - 1e-9, autocorr=autocorr,
                        n_lags=n_lags, **s.association_args())  # q ~ 1 keeps every pair
        hits, n = hits + int((res.p < 0.05).sum()), n + res.p.size
    return hits / n, n


def test_exact_null_is_calibrated_with_24_confounds_per_150_frame_run():
    """AR(1) 0.6 noise, 2 runs of 150 frames, 24 random-walk confounds per run plus detrend and
    the 1/128 Hz cosines on both sides: FPR at 0.05 in [0.04, 0.06] (the old stationary formula
    is liberal here: measured 0.078)."""
    from bids_vlm.simulate import Design

    design = Design(n_runs=2, n_frames=150, n_confounds=24, noise="ar1:0.6")
    fpr, n = _null_fpr(design, 1500, 30, [0, 1], "exact")
    assert 4 * np.sqrt(0.05 * 0.95 / n) < 0.01  # the interval is wider than the noise
    assert 0.04 <= fpr <= 0.06, fpr
    old, _ = _null_fpr(design, 1500, 30, [0, 1], "bartlett")
    assert old > 0.06, old  # the problem the exact variance solves


def test_null_ans_get_no_bn_and_planted_ans_are_found():
    """100 ANs, 20 of them planted (r = 0.3 with 20 voxels each) among 2000 AR(1) 0.6 voxels:
    null ANs with any BN <= q + 3 binomial SE; planted ANs found (any BN among their voxels)
    with sensitivity >= 0.8; pooled FDP <= q + 3 binomial SE of the discoveries."""
    from bids_vlm.simulate import Design, session

    owner = np.full(2000, -1)
    owner[:400] = np.repeat(np.arange(20), 20)
    beta = 0.3 / np.sqrt(1 - 0.3 ** 2)

    def plant(x):  # x: the run's raw regressors (T, 100), unit variance
        out = np.zeros((x.shape[0], 2000))
        out[:, :400] = beta * x[:, owner[:400]]
        return out

    s = session(np.random.default_rng(7), Design(noise="ar1:0.6"), 2000, n_an=100,
                signal=plant)
    res = associate(s.regressors, s.voxels, q=0.05, **s.association_args())
    true = owner[res.voxel_index] == res.an_index
    null_with_bn = np.unique(res.an_index[res.an_index >= 20]).size / 80
    found = np.unique(res.an_index[true]).size / 20
    fdp = (~true).mean()
    assert null_with_bn <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 80), null_with_bn
    assert found >= 0.8, found
    assert fdp <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / max(len(true), 1)), fdp


def _selective_reference(p, q):
    """Benjamini & Bogomolov (2014) with Simes and BH, from the dense p (N, V), numpy only."""
    n_an, n_vox = p.shape
    ranked = np.sort(p, axis=1)
    simes = (n_vox * ranked / np.arange(1, n_vox + 1)).min(1)
    selected = stats.false_discovery_control(simes) <= q
    level = q * selected.sum() / n_an
    keep = np.zeros_like(p, dtype=bool)
    for a in np.flatnonzero(selected):
        keep[a] = stats.false_discovery_control(p[a]) <= level
    return keep, simes


@pytest.mark.parametrize("block", [1, 64])
def test_selective_equals_dense_reference(problem, block):
    """--fdr-scope selective (default): Simes p per AN, BH across ANs, BH within the selected
    ANs at q R / N; the same entries and Simes p as a dense numpy reference."""
    from bids_vlm.stats.association import association_z

    x, y = problem
    y = y.copy()
    y[:, 20:22] += 0.15 * x[:, [9]]  # a weak AN: discoveries at q per AN, not after selection
    z = association_z(x, y, run_lengths=RUNS, n_lags=12)
    p = 2 * special.ndtr(-np.abs(z))
    keep, simes = _selective_reference(p, 0.05)
    res = associate(x, y, q=0.05, block_size=block, run_lengths=RUNS, n_lags=12)
    per_an = associate(x, y, q=0.05, run_lengths=RUNS, n_lags=12, fdr_scope="an")
    assert set(zip(res.an_index.tolist(), res.voxel_index.tolist())) == set(zip(*np.nonzero(keep)))
    assert len(per_an.r) >= len(res.r) > 10
    known = np.isfinite(res.p_an)
    np.testing.assert_allclose(res.p_an[known], simes[known], rtol=1e-3)
    assert np.all(simes[~known] > 0.05)
    np.testing.assert_allclose(per_an.p_an[known], res.p_an[known], rtol=1e-4)
    np.testing.assert_array_equal(res.n_pos + res.n_neg, keep.sum(1))
    np.testing.assert_array_equal(res.bn_count, keep.sum(0))
    assert np.all(np.isinf(res.z_threshold[keep.sum(1) == 0]))


@pytest.mark.slow
def test_selective_controls_layers_with_any_bn_under_the_complete_null():
    """Complete null (AR(1) 0.6, cleaned): with --fdr-scope selective a whole layer gets any BN
    with probability <= q (BH across ANs of Simes p controls the family-wise rate under the
    complete null); 60 simulated layers, bound q + 3 binomial SE."""
    from bids_vlm.simulate import Design, session

    layers, with_bn = 60, 0
    for seed in range(layers):
        s = session(np.random.default_rng(1000 + seed), Design(n_frames=150), 400, n_an=20)
        res = associate(s.regressors, s.voxels, q=0.05, **s.association_args())
        with_bn += len(res.an_index) > 0
    assert with_bn / layers <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / layers), with_bn


def test_selective_drops_an_an_that_bh_per_an_keeps():
    """4 ANs x 100 voxels: AN 0 strong, AN 1 one voxel at p 4e-4 (BH per AN at 0.05 keeps it:
    <= 0.05 / 100; its Simes p 0.04 is not <= 0.05 * 2 / 4 across ANs), ANs 2-3 null."""
    from bids_vlm.stats.fdr import simes_and_selective

    an = np.array([0] * 10 + [1])
    p = np.r_[np.full(10, 1e-6), 4e-4]
    keep, simes, thr = simes_and_selective(an, p, 4, 100, 0.05)
    assert keep[:10].all() and not keep[10]
    np.testing.assert_allclose(simes[:2], [1e-5, 0.04])
    assert np.isnan(simes[2:]).all() and np.isinf(thr[1:]).all()
    np.testing.assert_allclose(thr[0], -special.ndtri(0.05 / 4 * 10 / 100 / 2), rtol=1e-6)


@pytest.mark.parametrize("scope", ["an", "selective"])
def test_the_torch_path_on_the_cpu_gives_the_compiled_paths_result(scope, monkeypatch):
    """The torch operations CUDA runs (blocks scanned by torch, their tensors placed by the
    entry store) run on the CPU too: the same discoveries and z (to float32 rounding) as the
    compiled kernels, so that the GPU's path through the store is checked where there is none."""
    from bids_vlm.stats import backends

    rng = np.random.default_rng(7)
    shared = rng.standard_normal((300, 1))  # a dense layer: most ANs carry it, like 200 voxels
    x = shared * rng.uniform(-0.8, 0.8, 70) + rng.standard_normal((300, 70))
    y = rng.standard_normal((300, 500))
    y[:, :200] += 0.5 * shared
    compiled = associate(x, y, run_lengths=RUNS, block_size=16, fdr_scope=scope)
    monkeypatch.setitem(backends.BACKENDS, "cpu", backends.Backend(
        "cpu", tile=256, prep_chunk=256, compiled=False))
    torch_path = associate(x, y, run_lengths=RUNS, block_size=16, fdr_scope=scope)
    assert len(compiled.r) > 1000
    for name in ("an_index", "voxel_index", "n_pos", "n_neg", "bn_count"):
        np.testing.assert_array_equal(getattr(torch_path, name), getattr(compiled, name))
    np.testing.assert_allclose(torch_path.z, compiled.z, rtol=1e-5)
    np.testing.assert_allclose(torch_path.p, compiled.p, rtol=1e-4)
