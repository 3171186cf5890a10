"""Compiled CPU kernels of the encoding (numba): the elementwise work around its products.

Per batch of voxels the ridge's products are float32 GEMMs; what follows each of them was a
chain of torch operations, each a pass over the batch: the inner folds' squared errors
(subtract, square, sum over the test frames, to float64: 4 passes over n_alpha x n_test x nb
values, a third of the encoding's time at the paper's scale), the held-out run's sums for r
and R^2 (means, centred copies, products: about 10 passes) and its prediction's
autocorrelations for the z (an FFT of every column). Each is one compiled loop here, reading
its inputs once or twice, vectorised over the voxels (the contiguous axis), releasing the GIL
so that the encoding's worker threads run them at once. On CUDA the torch operations stay
(:mod:`bids_vlm.encoding.ridge`, :mod:`bids_vlm.encoding.ridge_solver`); tests check that both
agree.
"""
from __future__ import annotations

import numpy as np
import torch

from bids_vlm.jit import fast


@fast
def _sse(pred, y_te, score, n_te):  # pragma: no cover - compiled
    n_alpha, nb = score.shape
    acc = np.empty(nb, np.float32)
    for a in range(n_alpha):
        acc[:] = 0.0
        for t in range(n_te):
            row, yt = pred[a * n_te + t], y_te[t]
            for v in range(nb):
                d = row[v] - yt[v]
                acc[v] += d * d
        for v in range(nb):
            score[a, v] -= np.float64(acc[v]) / n_te


def subtract_sse(score: torch.Tensor, pred: torch.Tensor, y_te: torch.Tensor) -> None:
    """score (n_alpha, nb) float64 -= each alpha's mean squared error over the test frames:
    pred (n_alpha * n_te, nb) float32, the predictions of every alpha stacked, y_te (n_te, nb)
    float32. In place; float32 sums over the frames, as the torch operations on a GPU."""
    if score.device.type != "cpu":
        subtract_sse_torch(score, pred, y_te)
        return
    _sse(_array(pred), _array(y_te), score.numpy(), y_te.shape[0])


def subtract_sse_torch(score: torch.Tensor, pred: torch.Tensor, y_te: torch.Tensor) -> None:
    """:func:`subtract_sse` by torch operations (a GPU's)."""
    n_te = y_te.shape[0]
    err = pred.view(score.shape[0], n_te, -1).sub(y_te)
    score -= err.square_().sum(1).double() / n_te


@fast
def _run_sums(p, y, out):  # pragma: no cover - compiled
    n, nb = p.shape
    mp, my = np.zeros(nb), np.zeros(nb)
    for t in range(n):
        pt, yt = p[t], y[t]
        for v in range(nb):
            mp[v] += pt[v]
            my[v] += yt[v]
    for v in range(nb):
        mp[v] /= n
        my[v] /= n
    syy, spp, syp, see = out[0], out[1], out[2], out[3]
    syy[:], spp[:], syp[:], see[:] = 0.0, 0.0, 0.0, 0.0
    for t in range(n):
        pt, yt = p[t], y[t]
        for v in range(nb):
            pv, yv = np.float64(pt[v]), np.float64(yt[v])
            dp, dy, e = pv - mp[v], yv - my[v], yv - pv
            syy[v] += dy * dy
            spp[v] += dp * dp
            syp[v] += dy * dp
            see[v] += e * e


def run_sums_cpu(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(4, nb) float64 [S_yy, S_pp, S_yp, S_ee] of one run's predictions and voxels (n, nb)
    float32 on the CPU (:func:`bids_vlm.encoding.ridge.run_sums`), in float64 (exactly 0
    for a constant series)."""
    out = np.empty((4, pred.shape[1]))
    _run_sums(_array(pred), _array(y), out)
    return torch.from_numpy(out)


LAG_COLUMNS = 16  # columns transposed at a time into contiguous float64 series


@fast
def _lag_terms(p, out):  # pragma: no cover - compiled
    n, nb = p.shape
    n_lags = out.shape[1] - 1
    top = min(n_lags, n - 1)
    mean = np.zeros(nb)
    for t in range(n):
        pt = p[t]
        for v in range(nb):
            mean[v] += pt[v]
    for v in range(nb):
        mean[v] /= n
    strip = np.empty((LAG_COLUMNS, n))  # centred columns, each contiguous
    for v0 in range(0, nb, LAG_COLUMNS):
        w = min(LAG_COLUMNS, nb - v0)
        for t in range(n):
            pt = p[t]
            for j in range(w):
                strip[j, t] = pt[v0 + j] - mean[v0 + j]
        for j in range(w):
            x, row = strip[j], out[v0 + j]
            den = 0.0  # the centred sum of squares, as run_sums' S_pp
            for t in range(n):
                den += x[t] * x[t]
            varying = np.sqrt(den / n) > 1e-12  # heldout_scores' test of a constant series
            row[:] = 0.0
            if varying and den > 0.0:
                for k in range(1, top + 1):
                    total = 0.0
                    for t in range(n - k):
                        total += x[t] * x[t + k]
                    row[k - 1] = total / den
                row[n_lags] = 1.0


def lag_terms_cpu(pred_run: torch.Tensor, n_lags: int) -> torch.Tensor:
    """(nb, K + 1) float64 [rho(1..K), 1] of one run's predictions (n_run, nb) float32 on
    the CPU, both 0 where the prediction is constant (an SD <= 1e-12, the test of
    :func:`bids_vlm.encoding.ridge.heldout_scores`):
    :func:`bids_vlm.encoding.ridge.prediction_lag_terms`, from the lagged sums of the centred
    series in float64."""
    out = np.empty((pred_run.shape[1], n_lags + 1))
    _lag_terms(_array(pred_run), out)
    return torch.from_numpy(out)


def _array(x) -> np.ndarray:
    """A CPU tensor or array as a C-contiguous float32 array (a copy only when it is not)."""
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)
