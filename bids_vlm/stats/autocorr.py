"""Autocorrelation of time series within runs, and the null variance of a correlation.

``exact`` (default): the null variance of r between a fixed cleaned regressor x~ and a voxel
whose noise y is stationary (autocorrelation rho_S) before the cleaning projection M (mean,
trend, cosines, confounds; per run):

    Var(r) ~ x~' M S M x~ / (|x~|^2 tr(M S)) = (1 + 2 sum_k rho_x(k) rho_S(k))
                                               / (m_0 + 2 sum_k rho_S(k) m_k)

with rho_x the cleaned regressor's autocorrelation within runs, m_k = sum_t M[t, t+k] (m_0 =
T minus the removed dimensions) and rho_S estimated from each voxel's detrended but otherwise
uncleaned series, Tukey-tapered (w_k rho_S(k)). The numerator is a lag sum per AN x voxel pair
(the matrix product of the association); the denominator is one number per voxel.

``bartlett``: the stationary formula on the cleaned series (Bartlett 1935; Afyouni, Smith &
Nichols 2019, NeuroImage 199:609): ``T_eff = D / (1 + 2 sum_k w_k^2 rho_x(k) rho_y(k))``. Once
confounds are projected out it overestimates T_eff (false-positive rate 0.065-0.094 at 0.05 for
AR(1) 0.3-0.9 noise in ``benchmarks/bench_calibration.py``); kept for comparison.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from bids_vlm.jit import njit


def default_lags(run_lengths) -> int:
    """About 2 sqrt(frames) of the shortest run, at least 1 and less than that run.

    In simulations (AR(1) phi 0.6 BOLD, HRF-smoothed regressors, 150-frame runs) the Tukey-tapered
    estimate reaches a false-positive rate of 0.052-0.055 at 0.05 with 24 lags, 0.055-0.060 with 12.
    """
    shortest = int(min(run_lengths))
    return max(1, min(shortest - 2, int(round(2.0 * math.sqrt(shortest)))))


def tukey_taper(n_lags: int) -> np.ndarray:
    """(n_lags,) Tukey weights 0.5 (1 + cos(pi k / (n_lags + 1))), k = 1..n_lags."""
    k = np.arange(1, n_lags + 1)
    return 0.5 * (1.0 + np.cos(np.pi * k / (n_lags + 1)))


def fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (a fast FFT size)."""
    best, p5 = 1 << max(0, n - 1).bit_length(), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best, p35 = min(best, p), p35 * 3
        p5 *= 5
    return best


@functools.lru_cache(maxsize=16)
def _inverse_dft(nfft: int, n_lags: int, device: str) -> torch.Tensor:
    """(2 (nfft // 2 + 1), n_lags + 1): squared real and imaginary parts of a spectrum (as
    ``view_as_real`` lays them out) @ this = circular autocovariance at lags 0..n_lags."""
    f = np.arange(nfft // 2 + 1)[:, None]
    weight = np.where((f == 0) | (2 * f == nfft), 1.0, 2.0) / nfft
    cos = weight * np.cos(2 * np.pi * f * np.arange(n_lags + 1)[None] / nfft)
    return torch.from_numpy(np.repeat(cos, 2, axis=0).astype(np.float32)).to(device)


def autocorrelations(x: torch.Tensor, run_lengths, n_lags: int) -> torch.Tensor:
    """(n_lags, n) autocorrelations rho(1..n_lags) of the columns of x (T, n); see
    :func:`row_autocorrelations`."""
    return row_autocorrelations(x.T, run_lengths, n_lags).T


def row_autocorrelations(rows: torch.Tensor, run_lengths, n_lags: int,
                         chunk: int = 128) -> torch.Tensor:
    """(n, n_lags) autocorrelations rho(1..n_lags) of the rows of ``rows`` (n, T).

    Computed within runs (rows centred per run; no lag crosses a boundary) and pooled:
    sum over runs of sum_t x[t] x[t+k], divided by the pooled sum of squares. The lagged sums
    come from the power spectrum (an FFT of every run, zero-padded to a power of two past the
    longest run plus n_lags so that nothing wraps around; then one small matrix product for the
    lags 0..n_lags, summed over runs), rows in chunks that stay in cache.
    """
    runs = [int(n) for n in run_lengths]
    dev = rows.device
    nfft = fft_length(max(runs) + n_lags)
    to_lags = _inverse_dft(nfft, n_lags, str(dev))
    out = torch.empty(rows.shape[0], n_lags, device=dev)
    frames = torch.zeros(min(chunk, rows.shape[0]), len(runs), nfft, device=dev)
    for c in range(0, rows.shape[0], chunk):
        part = rows[c:c + chunk].float()
        buf = frames[:part.shape[0]]
        start = 0
        for i, length in enumerate(runs):
            seg = part[:, start:start + length]
            torch.sub(seg, seg.sum(1, keepdim=True) / length, out=buf[:, i, :length])
            start += length
        power = torch.view_as_real(torch.fft.rfft(buf, dim=2)).square_()  # (w, R, nf, 2)
        lagged = power.view(part.shape[0], len(runs), -1).sum(1) @ to_lags  # (w, K + 1)
        den = lagged[:, :1]
        out[c:c + chunk] = torch.where(den > 1e-12, lagged[:, 1:] / den.clamp(min=1e-30), 0.0)
    return out


def bartlett_weights(n_lags: int) -> torch.Tensor:
    """(n_lags,) 2 w_k^2 (Tukey taper w): factor = 1 + sum_k weights_k rho_x(k) rho_y(k)."""
    return torch.from_numpy((2.0 * tukey_taper(n_lags) ** 2).astype(np.float32))


def noise_factors(noise_sums, traces, n_lags: int) -> torch.Tensor:
    """(V, n_lags + 1) voxel factors of the ``exact`` null variance: [2 w_k rho_S(k) for
    k = 1..K, 1] / (m_0 + 2 sum_k w_k rho_S(k) m_k), so that Var(r) of a regressor with
    autocorrelations rho_x is [rho_x(1..K), 1] . factors.

    noise_sums: (>= K + 1, V) lag sums of each voxel's detrended uncleaned series, pooled over
    runs (:func:`bids_vlm.design.cleaning.noise_lag_sums`); traces: (>= K + 1,) sum_t M[t, t+k]
    of the cleaning projections, summed over runs (:func:`bids_vlm.design.cleaning.lag_traces`).
    """
    sums = np.asarray(noise_sums, np.float64)[:n_lags + 1]
    m = np.asarray(traces, dtype=np.float64)[:n_lags + 1]
    if sums.shape[0] < n_lags + 1 or m.shape[0] < n_lags + 1:
        raise ValueError(f"noise lag sums ({sums.shape[0]}) and traces ({m.shape[0]}) must "
                         f"cover lags 0..{n_lags}")
    out = np.empty((sums.shape[1], n_lags + 1), np.float32)
    _factors(sums, m, 2.0 * tukey_taper(n_lags), out)
    return torch.from_numpy(out)


@njit  # IEEE order
def _factors(sums, m, weights, out):  # pragma: no cover - compiled
    """out (V, K + 1) float32 of :func:`noise_factors`, in the order of the torch operations
    it replaced (the same values): rho_k = sums_k / sums_0 (0 for sums_0 <= 1e-12),
    a_k = weights_k rho_k, den = max(4, m_0 + sum_k a_k m_k); a_k / den and 1 / den. Two
    passes over the lags' rows instead of ten over (K, V) float64 temporaries."""
    n_lags, n_vox = len(weights), sums.shape[1]
    den = np.zeros(n_vox)
    for k in range(n_lags):  # lag by lag: contiguous rows of sums
        for v in range(n_vox):
            energy = sums[0, v]
            rho = sums[k + 1, v] / max(energy, 1e-30) if energy > 1e-12 else 0.0
            den[v] += (weights[k] * rho) * m[k + 1]
    for v in range(n_vox):
        den[v] = max(m[0] + den[v], 4.0)
    for v0 in range(0, n_vox, 64):  # 64 voxels' rows of out stay in L1 across the lags
        v1 = min(v0 + 64, n_vox)
        for k in range(n_lags):
            for v in range(v0, v1):
                energy = sums[0, v]
                rho = sums[k + 1, v] / max(energy, 1e-30) if energy > 1e-12 else 0.0
                out[v, k] = (weights[k] * rho) / den[v]
        for v in range(v0, v1):
            out[v, n_lags] = 1.0 / den[v]


def demean_traces(run_lengths, n_lags: int, n_removed: int = 0) -> np.ndarray:
    """(n_lags + 1,) :func:`noise_factors` traces when the cleaning is each run's mean removal
    (M = I - 11'/T per run), with m_0 = T - n_removed when more dimensions were removed."""
    runs = [int(n) for n in run_lengths]
    k = np.arange(n_lags + 1)
    out = sum(-np.clip(n - k, 0, None) / n for n in runs)  # off-diagonal entries -1/T
    out[0] = sum(runs) - max(int(n_removed), len(runs))
    return out


def lag_sums(voxels, run_lengths, n_lags, chunk: int = 8192):
    """(K + 1, V) lag sums of the voxels' series (T, V) within runs (each run centred), pooled;
    voxels in chunks, so that the temporaries stay small."""
    out = np.zeros((n_lags + 1, voxels.shape[1]))
    for c in range(0, voxels.shape[1], chunk):
        start = 0
        for n in run_lengths:
            part = np.asarray(voxels[start:start + n, c:c + chunk], np.float32)
            rows = torch.from_numpy(np.ascontiguousarray(part.T))
            energy = (rows - rows.mean(1, keepdim=True)).square().sum(1).double()
            rho = row_autocorrelations(rows, [n], n_lags).double()  # (w, K)
            out[:, c:c + chunk] += torch.cat([energy[None], (rho * energy[:, None]).T]).numpy()
            start += n
    return out
