"""AN x voxel association: streamed blocks equal a dense computation (scipy r + BH), planted
effects are found, white-noise nulls are calibrated, degenerate columns are harmless."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from bids_vlm.encoding import associate, bh_r_thresholds, normalize_columns
from bids_vlm.encoding.association import p_from_r


def _dense(x, y, q):
    """Reference: scipy Pearson r and p for every pair, BH per AN with scipy."""
    r = np.array([[stats.pearsonr(x[:, i], y[:, v])[0] for v in range(y.shape[1])]
                  for i in range(x.shape[1])])
    p = np.array([[stats.pearsonr(x[:, i], y[:, v])[1] for v in range(y.shape[1])]
                  for i in range(x.shape[1])])
    sig = np.array([stats.false_discovery_control(row) <= q for row in p])
    return r, p, sig


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 20))
    y = rng.standard_normal((120, 60))
    y[:, :10] += 0.6 * x[:, [0]]
    y[:, 10:15] -= 0.5 * x[:, [5]]
    return x, y


@pytest.mark.parametrize("block", [1, 7, 20, 64])
def test_streamed_equals_dense(problem, block):
    x, y = problem
    r, p, sig = _dense(x, y, 0.05)
    res = associate(x, y, q=0.05, block_size=block)
    np.testing.assert_array_equal(res.n_pos, (sig & (r > 0)).sum(1))
    np.testing.assert_array_equal(res.n_neg, (sig & (r < 0)).sum(1))
    np.testing.assert_array_equal(res.bn_count, sig.sum(0))
    peak = np.abs(r).argmax(1)
    np.testing.assert_array_equal(res.peak_voxel, peak)
    np.testing.assert_allclose(res.peak_r, r[np.arange(len(r)), peak], atol=1e-5)
    np.testing.assert_allclose(res.best_r, r[np.abs(r).argmax(0), np.arange(r.shape[1])],
                               atol=1e-5)
    dense_entries = set(zip(*np.nonzero(sig)))
    assert set(zip(res.an_index.tolist(), res.voxel_index.tolist())) == dense_entries
    np.testing.assert_allclose(res.r, r[res.an_index, res.voxel_index], atol=1e-5)
    np.testing.assert_allclose(res.p, p[res.an_index, res.voxel_index], rtol=1e-3, atol=1e-12)


def test_planted_effects_found_with_sign(problem):
    x, y = problem
    res = associate(x, y, q=0.05)
    mine = res.an_index == 0
    assert set(range(10)) <= set(res.voxel_index[mine])
    assert (res.r[mine & (res.voxel_index < 10)] > 0).all()
    neg = res.an_index == 5
    assert set(range(10, 15)) <= set(res.voxel_index[neg][res.r[neg] < 0])


def test_white_noise_null_is_calibrated():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 100))
    y = rng.standard_normal((200, 400))
    r = normalize_columns(x).T @ normalize_columns(y)
    fpr = (p_from_r(r, 200) < 0.05).mean()
    assert 0.04 < fpr < 0.06  # measured 0.0497
    res = associate(x, y, q=0.05)
    # global null: BH keeps P(any discovery) <= q for each AN
    assert ((res.n_pos + res.n_neg) > 0).mean() <= 0.1


def test_bh_thresholds_decrease_with_rank():
    thr = bh_r_thresholds(1000, 300, 0.05)
    assert np.all(np.diff(thr) < 0)
    t_crit = stats.t.isf(0.05 / 1000 / 2, 298)
    assert thr[0] == pytest.approx(t_crit / np.sqrt(298 + t_crit ** 2))


def test_constant_columns_are_never_significant():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    x[:, 1] = 4.0
    y = rng.standard_normal((50, 5))
    y[:, 2] = -1.0
    y[:, 0] += 3 * x[:, [0]][:, 0]
    res = associate(x, y)
    assert res.n_pos[1] == res.n_neg[1] == 0 and res.bn_count[2] == 0
    assert res.bn_count[0] >= 1


def test_frame_mismatch_raises():
    with pytest.raises(ValueError, match="frames"):
        associate(np.zeros((10, 2)), np.zeros((11, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(problem):
    x, y = problem
    cpu = associate(x, y, block_size=7)
    gpu = associate(x, y, block_size=7, device="cuda")
    np.testing.assert_array_equal(cpu.n_pos, gpu.n_pos)
    np.testing.assert_array_equal(cpu.bn_count, gpu.bn_count)
    np.testing.assert_allclose(cpu.best_r, gpu.best_r, atol=1e-5)
