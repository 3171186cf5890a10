"""The compiled per-tile statistics (CPU) equal the torch operations used on CUDA, and the
values they stand for: u = s^2 r^2 / (1 - r^2) with the sign of r, chunk maxima, counts, peaks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_vlm.stats.association import _prepare_block, _prepare_voxels
from bids_vlm.stats.blockscan import BlockScanner
from bids_vlm.stats.fdr import bh_z_thresholds
from bids_vlm.stats.kernels import CHUNK, NO_FACTORS, tile_stats

RUNS = [120, 80]


def _problem(n_an=9, n_vox=300, seed=0):
    """Regressors (T, n_an) and voxels (T, n_vox) with planted, exact (|r| = 1) and constant
    columns, and voxel rows prepared as for the association."""
    rng = np.random.default_rng(seed)
    t = sum(RUNS)
    x = rng.standard_normal((t, n_an)).astype(np.float32)
    x[:, 3] = np.convolve(rng.standard_normal(t + 9), np.ones(10) / 10, "valid")  # smooth
    y = rng.standard_normal((t, n_vox)).astype(np.float32)
    y[:, :40] += 0.5 * x[:, [0]]
    y[:, 40:50] -= 3.0 * x[:, [3]]
    y[:, 50] = -2.0 * x[:, 1] + 3.0  # r = -1 (up to rounding)
    y[:, 60] = 1.0  # constant
    return x, y


def _scanner(y, fused, bartlett=True):
    vox = _prepare_voxels(y, RUNS, 12 if bartlett else None, torch.device("cpu"), map)
    zcrit = torch.from_numpy(bh_z_thresholds(vox.n_vox, 0.05).astype(np.float32))
    return vox, BlockScanner(vox, 16, 128, zcrit, fused=fused)


@pytest.mark.parametrize("bartlett", [True, False])
def test_fused_pass_equals_torch_pass(bartlett):
    x, y = _problem()
    outputs = []
    for fused in (True, False):
        vox, scanner = _scanner(y, fused, bartlett)
        xb, acf_b = _prepare_block(x, RUNS, 12 if bartlett else None, torch.device("cpu"),
                                     autocorr="bartlett")
        peak_r, peak_voxel, n_screen = scanner._pass(xb, acf_b)
        outputs.append((peak_r, peak_voxel, n_screen, scanner.u[:9 * vox.y.shape[0]].clone(),
                        scanner.u_max[:9 * vox.y.shape[0] // CHUNK].clone(),
                        scanner.best_r.clone()))
    fused, plain = outputs
    torch.testing.assert_close(fused[0], plain[0], atol=1e-7, rtol=0)
    assert torch.equal(fused[1], plain[1])
    assert torch.equal(fused[2], plain[2]) and fused[2][0] >= 40
    finite = torch.isfinite(plain[3])
    assert torch.equal(finite, torch.isfinite(fused[3]))  # |r| = 1 would give inf
    torch.testing.assert_close(fused[3][finite], plain[3][finite], rtol=2e-6, atol=0)
    torch.testing.assert_close(fused[4], plain[4], rtol=2e-6, atol=0)
    torch.testing.assert_close(fused[5], plain[5], atol=1e-7, rtol=0)
    assert fused[5][50] < -0.9999 and fused[1][1] == 50


def test_scan_fused_equals_torch():
    """Whole blocks (BH per AN included): the same discoveries either way."""
    x, y = _problem(n_an=12, n_vox=500, seed=3)
    results = []
    for fused in (True, False):
        _, scanner = _scanner(y, fused)
        results.append(scanner.scan(*_prepare_block(x, RUNS, 12, torch.device("cpu"),
                                                                autocorr="bartlett")))
    fused, plain = results
    for name in ("n_pos", "n_neg", "peak_voxel", "rows", "cols"):
        assert torch.equal(getattr(fused, name), getattr(plain, name)), name
    torch.testing.assert_close(fused.z, plain.z, rtol=1e-5, atol=1e-5)
    assert int(fused.n_pos[0]) >= 40 and int(fused.n_neg[3]) >= 5


def test_tile_stats_values():
    """Against a direct numpy computation: u, chunk maxima, counts, peaks (first voxel on
    ties) and the per-voxel signed r of largest |r| (first AN on ties)."""
    rng = np.random.default_rng(5)
    b, w = 3, 2 * CHUNK
    r = rng.uniform(-0.5, 0.5, (b, w)).astype(np.float32)
    r[1, 20] = r[1, 70] = r[1, 90] = -0.9  # ties within an AN: the first voxel is its peak
    r[2, 5] = 1.0
    f = rng.uniform(0.001, 0.3, (b, w)).astype(np.float32)
    n = 100.0
    u, u_max = np.empty_like(r), np.empty((b, w // CHUNK), np.float32)
    n_screen, best = np.zeros(b, np.float32), np.zeros(w + 10, np.float32)
    peak_abs, peak_r = np.full(b, -1.0, np.float32), np.zeros(b, np.float32)
    peak_voxel = np.zeros(b, np.int64)
    tile_stats(r, f, n - 3, 1 / n, 4.0, u, u_max, n_screen, 10, True, peak_abs, peak_r,
               peak_voxel, best)
    s2 = 1 / np.clip(f, 1 / n, 0.25) - 3
    with np.errstate(divide="ignore"):
        expected = np.sign(r) * s2 * r ** 2 / (1 - r ** 2)
    np.testing.assert_allclose(u, expected, rtol=1e-5)
    assert u[2, 5] == np.inf
    np.testing.assert_allclose(u_max, np.abs(expected).reshape(b, -1, CHUNK).max(2), rtol=1e-5)
    np.testing.assert_array_equal(n_screen, (np.abs(expected) >= 4.0).sum(1))
    np.testing.assert_array_equal(peak_voxel, 10 + np.abs(r).argmax(1))
    assert peak_voxel[1] == 30 and peak_r[1] == np.float32(-0.9) and peak_abs[2] == 1.0
    np.testing.assert_array_equal(best[10:], r[np.abs(r).argmax(0), np.arange(w)])
    assert not best[:10].any()
    tile_stats(r, NO_FACTORS, n - 3, 1 / n, 4.0, u, u_max, n_screen, 0, False, peak_abs,
               peak_r, peak_voxel, best)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(u, np.sign(r) * (n - 3) * r ** 2 / (1 - r ** 2), rtol=1e-5)


def test_kernel_compiles_without_a_writable_cache(monkeypatch):
    """Where numba finds no cache folder (read-only install and home), the kernel is compiled
    in memory instead of failing at import."""
    import numba

    from bids_vlm.stats import kernels

    njit = numba.njit

    def no_cache(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", no_cache)
    double = kernels._jit(lambda a: 2 * a)
    assert double(np.float32(2.0)) == 4.0


def test_prepare_rows_equals_torch_and_fft():
    """Rows and within-run autocorrelations from the compiled pass equal the torch
    normalisation and the FFT of row_autocorrelations: unequal runs, a run shorter than the
    lags, a constant column, float64 and strided input."""
    from bids_vlm.stats.association import _rows
    from bids_vlm.stats.autocorr import row_autocorrelations
    from bids_vlm.stats.kernels import prepare_rows

    rng = np.random.default_rng(7)
    runs, n_lags = [90, 6, 64], 8
    data = rng.standard_normal((sum(runs), 40)).cumsum(0)  # float64, autocorrelated
    data[:, 2] = 2.5  # column 1 of cols
    cols = data[:, ::2]  # strided
    rows, acf = np.empty((20, sum(runs)), np.float32), np.empty((20, n_lags), np.float32)
    prepare_rows(cols, runs, rows, acf)
    expected_rows = _rows(cols)
    np.testing.assert_allclose(rows, expected_rows.numpy(), atol=2e-7)
    np.testing.assert_allclose(acf, row_autocorrelations(expected_rows, runs, n_lags).numpy(),
                               atol=2e-6)
    assert not rows[1].any() and not acf[1].any()  # the constant column
    assert acf[0, 0] > 0.8  # a random walk
    np.testing.assert_allclose(np.linalg.norm(rows[[0, 2]], axis=1), 1.0, rtol=1e-6)
    only_rows = np.empty_like(rows)
    prepare_rows(cols, runs, only_rows)
    np.testing.assert_array_equal(only_rows, rows)


def test_entries_above_reads_back_exactly_and_never_overflows():
    from bids_vlm.stats.kernels import entries_above

    rng = np.random.default_rng(2)
    u = rng.standard_normal((3, 2 * CHUNK)).astype(np.float32) * 3
    u_max = np.abs(u).reshape(3, -1, CHUNK).max(2)
    crit = np.array([2.0, 5.0, np.inf], np.float32)
    counts = np.zeros(3, np.int64)
    tiles = [(100, u[:, :CHUNK], u_max[:, :1]), (100 + CHUNK, u[:, CHUNK:], u_max[:, 1:])]
    total = entries_above(tiles, crit, counts)
    np.testing.assert_array_equal(counts, (np.abs(u) >= crit[:, None]).sum(1))
    out = tuple(np.empty(total, dtype) for dtype in (np.int64, np.int64, np.float32))
    assert entries_above(tiles, crit, np.zeros(3, np.int64), out) == total
    rows, cols = np.nonzero(np.abs(u) >= crit[:, None])
    order = np.lexsort((cols, rows, cols >= CHUNK))  # tile by tile, row order within a tile
    np.testing.assert_array_equal(out[0], rows[order])
    np.testing.assert_array_equal(out[1], 100 + cols[order])
    np.testing.assert_array_equal(out[2], u[rows[order], cols[order]])
    small = tuple(a[:total - 1] for a in out)
    with pytest.raises(RuntimeError, match="room for"):
        entries_above(tiles, crit, np.zeros(3, np.int64), small)


def test_scan_fused_equals_torch_on_a_dense_block():
    """Many discoveries per AN and the exact null variance: the compiled read-back, exact z and
    BH (counts in bins) give the torch path's discoveries, in the same order (u, from the
    compiled tile pass, may differ from torch's in its last bit, and r and z with it)."""
    from bids_vlm.stats.autocorr import demean_traces, noise_factors
    from bids_vlm.stats.autocorr import lag_sums

    rng = np.random.default_rng(8)
    t = sum(RUNS)
    latent = np.cumsum(rng.standard_normal((t, 4)), 0)
    x = (latent @ rng.standard_normal((4, 12)) + 3 * rng.standard_normal((t, 12))).astype(
        np.float32)
    y = rng.standard_normal((t, 700)).astype(np.float32)
    y[:, :300] += (0.3 * latent @ rng.standard_normal((4, 300))).astype(np.float32)
    noise = noise_factors(lag_sums(y, RUNS, 12), demean_traces(RUNS, 12), 12)
    vox = _prepare_voxels(y, RUNS, 12, torch.device("cpu"), map, t, noise)
    zcrit = torch.from_numpy(bh_z_thresholds(vox.n_vox, 0.05).astype(np.float32))
    xb, acf_b = _prepare_block(x, RUNS, 12, torch.device("cpu"), t, "exact")
    fused, plain = (BlockScanner(vox, 16, 128, zcrit, fused=f).scan(xb, acf_b)
                    for f in (True, False))
    for name in ("n_pos", "n_neg", "z_threshold", "rows", "cols"):
        assert torch.equal(getattr(fused, name), getattr(plain, name)), name
    torch.testing.assert_close(fused.r, plain.r, rtol=1e-6, atol=0)
    torch.testing.assert_close(fused.z, plain.z, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(np.isnan(fused.p_an), np.isnan(plain.p_an))
    np.testing.assert_allclose(fused.p_an, plain.p_an, rtol=1e-4)
    assert len(fused.rows) > 0.1 * 12 * 700
