"""The association's compiled read-back of a block's candidates (BH's count on u per row) and
their exact z give what the definitions and the torch operations they replace give, exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_vlm.stats import readback
from bids_vlm.stats.bhcount import F32_SHIFT, rank_bins
from bids_vlm.stats.fdr import bh_z_thresholds
from bids_vlm.stats.kernels import CHUNK


def _bh_count(vals, crit):
    """BH's count by its definition: the largest k with #{vals >= crit[k - 1]} >= k (0 if
    none)."""
    passing = [k for k in range(1, len(crit) + 1) if (vals >= crit[k - 1]).sum() >= k]
    return max(passing, default=0)


def _block(rng, b=5, n_pad=3 * CHUNK, tile=2 * CHUNK):
    """A block's signed u laid out tile by tile (each tile (b, w) row-major), its chunk maxima,
    and the same u as (b, Vp)."""
    full = (rng.standard_normal((b, n_pad)) ** 2 * rng.uniform(1, 6, (b, 1))).astype(np.float32)
    full *= np.sign(rng.standard_normal((b, n_pad))).astype(np.float32)
    full[0] = 0.0
    full[1, :CHUNK] = 50.0
    u, u_max = [], []
    for s in range(0, n_pad, tile):
        part = full[:, s:s + tile]
        u.append(part.ravel())
        u_max.append(np.abs(part).reshape(b, -1, CHUNK).max(2).ravel())
    return np.concatenate(u), np.concatenate(u_max), full, tile


def test_read_back_keeps_exactly_bhs_count_on_u():
    rng = np.random.default_rng(3)
    u, u_max, full, tile = _block(rng)
    b, n_pad = full.shape
    u_crit = (bh_z_thresholds(n_pad, 0.2).astype(np.float32) ** 2)
    layout = rank_bins(u_crit.view(np.int32).astype(np.int64), F32_SHIFT)
    start = np.full(b, u_crit[-1], np.float32)
    out = (np.empty(b * n_pad + 1, np.int32), np.empty(b * n_pad + 1, np.int32),
           np.empty(b * n_pad + 1, np.float32))
    k = np.zeros(b, np.int64)
    n = readback.read_back(u, u_max, b, tile, start, out, k, u_crit, layout)
    rows, cols, vals = (a[:n] for a in out)
    for i in range(b):
        want = _bh_count(np.abs(full[i]), u_crit)
        assert k[i] == want
        mine = rows == i
        expected = np.flatnonzero(np.abs(full[i]) >= u_crit[want - 1]) if want else []
        np.testing.assert_array_equal(cols[mine], expected)  # voxels in order, exactly k
        np.testing.assert_array_equal(vals[mine], full[i, expected])
    assert k[0] == 0 and k[1] >= CHUNK and np.all(np.diff(rows) >= 0)
    # without BH's count: every entry above the row's start; too little room raises
    k_all = np.zeros(b, np.int64)
    n_all = readback.read_back(u, u_max, b, tile, start, out, k_all)
    np.testing.assert_array_equal(k_all, (np.abs(full) >= start[:, None]).sum(1))
    with pytest.raises(RuntimeError, match="room for"):
        readback.read_back(u, u_max, b, tile, start, tuple(a[:n_all] for a in out), k_all)


@pytest.mark.parametrize("n_factors", [0, 5, 13, 33, 70])
def test_exact_z_equals_the_torch_operations(n_factors):
    """Each candidate's factor (compiled dot product) equals torch's sum of the products up to
    float32 rounding; |r| from it by abs_r is bit for bit the torch expression of
    BlockScanner._exact for the same factor (0 factors: T_eff = D)."""
    rng = np.random.default_rng(n_factors)
    a = (rng.standard_normal((7, max(n_factors, 1))) * 0.05).astype(np.float32)
    acf_t = (rng.standard_normal((300, max(n_factors, 1))) * 0.05).astype(np.float32)
    a[:, -1], acf_t[:, -1] = 1.0 / 200, 1.0
    a[0], acf_t[0] = 0.1, 1.0  # AN 0 x voxel 0: a factor above 1/4 (T_eff below 4)
    rows, cols = rng.integers(0, 7, 5000), rng.integers(0, 300, 5000)
    rows[0] = cols[0] = 0
    u_abs = (rng.uniform(0.5, 80, 5000)).astype(np.float32)
    n = 200
    if n_factors:
        f = np.empty(5000, np.float32)
        readback.factors(a, acf_t, rows, cols, f)
        torch_f = (torch.from_numpy(a)[rows] * torch.from_numpy(acf_t)[cols]).sum(1)
        exact = (a[rows].astype(np.float64) * acf_t[cols]).sum(1)
        np.testing.assert_allclose(f, exact, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(f, torch_f.numpy(), rtol=1e-6, atol=1e-7)
        s2_t = 1.0 / torch.from_numpy(f).clamp(1.0 / n, 0.25) - 3.0
        assert s2_t[0] == 1.0 and (s2_t == n - 3.0).any()  # both clamps reached
    else:
        f, s2_t = None, torch.full((5000,), n - 3.0)
    s2, r = np.empty(5000, np.float32), np.empty(5000, np.float32)
    readback.abs_r(u_abs, f, n, s2, r)
    np.testing.assert_array_equal(s2, s2_t.numpy())
    np.testing.assert_array_equal(r, torch.rsqrt(1.0 + s2_t / torch.from_numpy(u_abs)).numpy())
    # |r| clamped for atanh in the same pass, as torch's clamp
    u_abs[:3] = (1e9, np.inf, np.nan)  # |r| above the clamp, 1, NaN
    s2_again, r2, clamped = (np.empty(5000, np.float32) for _ in range(3))
    readback.abs_r(u_abs, f, n, s2_again, r2, clamped)
    r_t = torch.rsqrt(1.0 + s2_t / torch.from_numpy(u_abs))
    np.testing.assert_array_equal(r2, r_t.numpy())
    np.testing.assert_array_equal(s2_again, s2)
    np.testing.assert_array_equal(clamped, r_t.clamp(max=1 - 1e-6).numpy())
    assert clamped[0] == clamped[1] == readback.R_MAX and np.isnan(clamped[2])
