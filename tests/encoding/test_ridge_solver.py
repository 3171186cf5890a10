"""The leave-one-run-out ridge engine (bids_vlm.encoding.ridge_solver): each fold's held-out
predictions and alphas equal himalaya's RidgeCV (F < T) and KernelRidgeCV (F > T) fitted with
the same inner splits; both product orders agree; batches, ties and devices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_vlm.encoding import ridge_solver as rs
from bids_vlm.encoding.ridge import fold_predict, himalaya_backend, run_splits

ALPHAS = np.logspace(-1, 7, 9)


def _data(run_lengths, n_features, n_vox=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((sum(run_lengths), n_features))
    w = rng.standard_normal((n_features, n_vox)) * (rng.random(n_vox) < 0.5) / np.sqrt(n_features)
    y = x @ w * rng.uniform(0.2, 2.0, n_vox) + rng.standard_normal((len(x), n_vox))
    return x, y


@pytest.mark.parametrize("run_lengths, n_features", [
    ([60, 60, 60], 20),  # RidgeCV: F < training frames, two whole-run inner folds
    ([60, 60, 60], 300),  # KernelRidgeCV: F > training frames
    ([80, 80], 30),  # one training run: five contiguous inner folds
    ([80, 80], 200),
    ([30] * 8, 50),  # seven training runs grouped into five inner folds
], ids=["primal", "kernel", "primal-1run", "kernel-1run", "grouped"])
def test_folds_equal_himalaya(run_lengths, n_features):
    x, y = _data(run_lengths, n_features)
    runs = run_splits(run_lengths)
    for k in range(len(runs)):
        with himalaya_backend("torch"):
            ref_pred, ref_alpha = rs.reference_fold_predict(x, y, runs, k, ALPHAS)
            pred, alpha = fold_predict(x, y, runs, k, ALPHAS)
        assert pred.shape == ref_pred.shape and pred.dtype == np.float32
        assert len(np.unique(alpha)) > 2  # the data make the voxels choose different alphas
        # himalaya returns exp(log(alpha)) in float32: 100.00001 for 100
        same = np.isclose(alpha, ref_alpha, rtol=1e-4)
        assert same.mean() >= 0.98
        if not same.all():  # float32 near-ties: equal CV scores in float64
            score = _cv_scores(x, y, runs, k)
            col = np.flatnonzero(~same)
            picked = [score[np.searchsorted(ALPHAS, a * (1 - 1e-4)), col]
                      for a in (alpha[col], ref_alpha[col])]
            np.testing.assert_allclose(*picked, rtol=2e-6)
        scale = np.abs(ref_pred).max()
        np.testing.assert_allclose(pred[:, same], ref_pred[:, same], rtol=0, atol=2e-5 * scale)


def _cv_scores(x, y, runs, k):
    """(n_alphas, V) float64 mean inner-fold -SSE / n_test of fold k."""
    from bids_vlm.encoding.folds import inner_splits

    train_runs = [r for i, r in enumerate(runs) if i != k]
    train = np.concatenate(train_runs)
    xt, yt = x[train], y[train]
    splits = inner_splits(train_runs)
    out = np.zeros((len(ALPHAS), y.shape[1]))
    for tr, te in splits:
        for i, a in enumerate(ALPHAS):
            w = np.linalg.solve(xt[tr].T @ xt[tr] + a * np.eye(x.shape[1]), xt[tr].T @ yt[tr])
            out[i] -= ((yt[te] - xt[te] @ w) ** 2).mean(0) / len(splits)
    return out


def test_product_orders_agree(monkeypatch):
    """Both ways of forming the inner predictions (M Y_in, or A D (B Y_in)) and of the held-out
    prediction (per-voxel weights, or voxels grouped by alpha) give the same answer."""
    x, y = _data([50, 50, 50], 12)
    runs = run_splits([50, 50, 50])
    yb = torch.from_numpy(y.astype(np.float32))
    fold = rs.Fold(x, runs, 1, ALPHAS, 5, "cpu")
    assert all(s.two_step for _, _, s in fold.cv.folds) and fold.outer.per_voxel
    pred, best = fold.solve(yb)
    xt, alphas = torch.from_numpy(x), torch.from_numpy(ALPHAS)
    outer = rs._decompose(xt, fold.train, torch.as_tensor(fold.test))
    monkeypatch.setattr(fold, "outer", _forced(rs._Predictor, *outer, alphas, "per_voxel"))
    for i, (tr, te, _) in enumerate(fold.cv.folds):
        inner = rs._decompose(xt, fold.train[tr], fold.train[te])
        fold.cv.folds[i] = (tr, te, _forced(rs._Stack, *inner, alphas, "two_step"))
    pred2, best2 = fold.solve(yb)
    assert torch.equal(best, best2)
    torch.testing.assert_close(pred, pred2, rtol=1e-4, atol=1e-4 * float(pred.abs().max()))


def _forced(cls, a, lam, b, alphas, flag):
    """An instance of cls built the other way than its cost rule picks."""
    obj = cls.__new__(cls)
    setattr(obj, flag, False)
    d = 1.0 / (lam[None, :] + alphas[:, None])
    if cls is rs._Stack:
        obj.m = ((a[None] * d[:, None, :]).reshape(-1, a.shape[1]) @ b).float()
    else:
        obj.m = [((a * d[i]) @ b).float() for i in range(len(alphas))]
    return obj


def test_batches_and_ties():
    """Results do not depend on the voxel batches nor on the threads; a constant (all-zero)
    voxel gets the largest alpha, as himalaya's tie-break gives it."""
    x, y = _data([40, 40, 40], 30, n_vox=700)
    y[:, 5] = 0.0
    runs = run_splits([40, 40, 40])
    whole = [(k, s, p, b) for k, s, p, _, b in rs.loro_blocks(x, y, runs, ALPHAS, batch=10**6)]
    threads = torch.get_num_threads()
    try:  # batches one after the other (as on a GPU) rather than on a pool of threads
        torch.set_num_threads(1)
        parts = list(rs.loro_blocks(x, y, runs, ALPHAS, batch=256))
    finally:
        torch.set_num_threads(threads)
    assert len(whole) == 3 and len(parts) == 9 == len(rs.loro_blocks(x, y, runs, ALPHAS,
                                                                     batch=256))
    for k, _, p, b in whole:
        p2 = torch.cat([q for kk, _, q, _, _ in parts if kk == k], 1)
        b2 = torch.cat([c for kk, _, _, _, c in parts if kk == k])
        assert torch.equal(b, b2)
        torch.testing.assert_close(p, p2, rtol=1e-5, atol=1e-5)
        assert int(b[5]) == len(ALPHAS) - 1


def test_device_of():
    assert rs.device_of("numpy").type == "cpu" and rs.device_of("torch").type == "cpu"
    assert rs.device_of("torch_cuda").type == "cuda"
