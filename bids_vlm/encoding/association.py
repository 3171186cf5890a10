"""Every AN regressor against every in-mask voxel: signed Pearson r, calibrated z, BH-FDR per AN.

The AN x voxel matrix is never held whole: ANs are processed in blocks of ``block_size``
(one (block, n_voxels) matrix at a time, on the GPU when asked), and only per-AN summaries,
per-voxel summaries and the significant entries are kept.

Significance (``autocorr``):

- ``"bartlett"`` (default): BOLD and HRF-convolved regressors are autocorrelated, so r varies
  more than for independent frames. Under the null of no association, Bartlett's formula gives
  ``Var(r) ~ (1 + 2 sum_k rho_x(k) rho_y(k)) / T``, with rho the autocorrelations of the two
  series. They are estimated within runs (no lag crosses a run boundary) up to ``n_lags``
  (default ~2 sqrt(run length)) and Tukey-tapered (Afyouni, Smith & Nichols 2019, NeuroImage 199).
  The sum over lags of every AN x voxel pair is one more (block x lags) @ (lags x voxels)
  product. The effective number of frames ``T_eff = T / (1 + 2 sum ...)`` (at most T) gives
  ``z = atanh(r) sqrt(T_eff - 3)``, compared with N(0, 1).
- ``"none"``: frames treated as independent (``T_eff = T``); anti-conservative for BOLD.

Benjamini-Hochberg over voxels for each AN works on |z| (p is decreasing in |z|): the number
of discoveries k* is the largest fixed point of ``k -> #{v : |z_v| >= z_crit(k)}`` with
``z_crit(k)`` the normal quantile of ``q k / (2 V)``. Iterating from k = V reaches it in a few
passes over the block, with no sort (an exact sort is the fallback when it has not converged).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from tqdm.auto import tqdm

AUTOCORR_METHODS = ("bartlett", "none")
_MAX_BH_ITER = 64


def method_description(autocorr: str = "bartlett", n_lags: int | None = None) -> str:
    """Human-readable description of the association test, for sidecars and reports."""
    base = "Pearson r between each AN regressor and each voxel over all frames; "
    if autocorr == "bartlett":
        lags = f"{n_lags} lags" if n_lags else "about 2 sqrt(run length) lags"
        test = ("z = atanh(r) sqrt(T_eff - 3) with the effective number of frames from "
                "Bartlett's variance of r for two autocorrelated series (autocorrelations "
                f"within runs, Tukey taper, {lags}); ")
    else:
        test = ("z = atanh(r) sqrt(T - 3), frames treated as independent (not corrected for "
                "temporal autocorrelation); ")
    return base + test + "two-sided; Benjamini-Hochberg FDR across in-mask voxels for each AN"


@dataclass
class AssociationResult:
    """Summaries of one (n_frames x N) regressor block against (n_frames x V) voxels.

    Per AN (N,): n_pos / n_neg (BN+ / BN- counts), peak_r (signed r of largest |r|),
    peak_voxel (its voxel index), z_threshold (BH critical |z|, inf when nothing passes).
    Per voxel (V,): bn_count (ANs with the voxel as BN), best_r (signed r of largest |r| over ANs).
    Significant entries (E,): an_index, voxel_index, r, z (signed), p (two-sided, uncorrected).
    """

    n_pos: np.ndarray
    n_neg: np.ndarray
    peak_r: np.ndarray
    peak_voxel: np.ndarray
    z_threshold: np.ndarray
    bn_count: np.ndarray
    best_r: np.ndarray
    an_index: np.ndarray
    voxel_index: np.ndarray
    r: np.ndarray
    z: np.ndarray
    p: np.ndarray
    n_frames: int


def normalize_columns(x: np.ndarray) -> np.ndarray:
    """Centre the columns of x (T, n) and scale them to unit norm; constant columns -> 0."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(x, axis=0, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12).astype(np.float32)


def default_lags(run_lengths) -> int:
    """About 2 sqrt(frames) of the shortest run, at least 1 and less than that run.

    In simulations (AR(1) phi 0.6 BOLD, HRF-smoothed regressors, 150-frame runs) the Tukey-tapered
    estimate reaches a false-positive rate of 0.052-0.055 at 0.05 with 24 lags, 0.055-0.060 with 12.
    """
    shortest = int(min(run_lengths))
    return max(1, min(shortest - 2, int(round(2.0 * math.sqrt(shortest)))))


def autocorrelations(x: torch.Tensor, run_lengths, n_lags: int) -> torch.Tensor:
    """(n_lags, n) autocorrelations rho(1..n_lags) of the columns of x (T, n).

    Computed within runs (columns centred per run; no lag crosses a boundary) and pooled:
    sum over runs of sum_t x[t] x[t+k], divided by the pooled sum of squares.
    """
    num = torch.zeros(n_lags, x.shape[1], dtype=torch.float64, device=x.device)
    den = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    start = 0
    for length in run_lengths:
        seg = x[start:start + length].double()
        seg = seg - seg.mean(0, keepdim=True)
        den += (seg * seg).sum(0)
        for k in range(1, min(n_lags, length - 1) + 1):
            num[k - 1] += (seg[:-k] * seg[k:]).sum(0)
        start += length
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num)).float()


def tukey_taper(n_lags: int) -> np.ndarray:
    """(n_lags,) Tukey weights 0.5 (1 + cos(pi k / (n_lags + 1))), k = 1..n_lags."""
    k = np.arange(1, n_lags + 1)
    return 0.5 * (1.0 + np.cos(np.pi * k / (n_lags + 1)))


def bh_z_thresholds(n_voxels: int, q: float) -> np.ndarray:
    """(n_voxels,) critical |z| for ranks k = 1..V of the BH step-up rule at level q."""
    alphas = q * np.arange(1, n_voxels + 1) / n_voxels
    return -special.ndtri(alphas / 2.0)


def p_from_z(z) -> np.ndarray:
    """Two-sided p of standard-normal z."""
    return 2.0 * special.ndtr(-np.abs(np.asarray(z, dtype=np.float64)))


def bh_counts(absz: torch.Tensor, zcrit: torch.Tensor) -> torch.Tensor:
    """(b,) number of BH discoveries in each row of absz (b, V); zcrit (V,) from
    :func:`bh_z_thresholds`. Fixed-point iteration, exact sort for rows that do not converge."""
    n_vox = absz.shape[1]
    inf = torch.tensor(float("inf"), device=absz.device)
    k = (absz >= zcrit[-1]).sum(1)
    rows = torch.arange(absz.shape[0], device=absz.device)
    for _ in range(_MAX_BH_ITER):
        thr = torch.where(k[rows] > 0, zcrit[(k[rows] - 1).clamp(min=0)], inf)
        new = (absz[rows] >= thr[:, None]).sum(1)
        moved = new != k[rows]
        k[rows] = new
        rows = rows[moved]
        if rows.numel() == 0:
            return k
    ranked = absz[rows].sort(dim=1, descending=True).values >= zcrit[None, :]
    k[rows] = torch.where(ranked.any(1), n_vox - ranked.flip(1).int().argmax(1), 0)
    return k


def associate(regressors, voxels, q=0.05, block_size=256, device="cpu", progress=False,
              desc="association", run_lengths=None, autocorr="bartlett",
              n_lags=None) -> AssociationResult:
    """Association of every column of ``regressors`` (T, N) with every column of ``voxels`` (T, V).

    run_lengths: frames per run (sum T); default one run. Both inputs are normalised here
    (centred, unit norm over all frames), so r is their inner product.
    """
    n_frames, n_an = regressors.shape
    if voxels.shape[0] != n_frames:
        raise ValueError(f"regressors have {n_frames} frames, voxels {voxels.shape[0]}")
    if autocorr not in AUTOCORR_METHODS:
        raise ValueError(f"autocorr must be one of {AUTOCORR_METHODS}, not '{autocorr}'")
    run_lengths = list(run_lengths) if run_lengths is not None else [n_frames]
    if sum(run_lengths) != n_frames:
        raise ValueError(f"run lengths {run_lengths} do not add up to {n_frames} frames")
    dev = torch.device(device)
    y = torch.from_numpy(normalize_columns(voxels)).to(dev)
    x_all = torch.from_numpy(normalize_columns(regressors))
    zcrit = torch.from_numpy(bh_z_thresholds(y.shape[1], q).astype(np.float32)).to(dev)
    bartlett = None
    if autocorr == "bartlett":
        n_lags = n_lags or default_lags(run_lengths)
        w2 = torch.from_numpy((2.0 * tukey_taper(n_lags) ** 2).astype(np.float32)).to(dev)
        bartlett = (w2, autocorrelations(y, run_lengths, n_lags), run_lengths, n_lags)
    acc = _Accumulator(n_an, y.shape[1], dev)
    for start in tqdm(range(0, n_an, block_size), disable=not progress, desc=desc, unit="block"):
        x = x_all[:, start:start + block_size].to(dev)
        r = x.T @ y
        acc.add(start, r, _z_scores(r, x, bartlett, n_frames), zcrit)
    return acc.result(n_frames)


def _z_scores(r, x, bartlett, n_frames):
    """(b, V) z of each r: Fisher's transform scaled by the effective number of frames."""
    z = torch.atanh(r.clamp(-1 + 1e-6, 1 - 1e-6))
    if bartlett is None:
        return z.mul_(math.sqrt(n_frames - 3))
    w2, acf_y, run_lengths, n_lags = bartlett
    acf_x = autocorrelations(x, run_lengths, n_lags)  # (K, b)
    factor = (acf_x * w2[:, None]).T @ acf_y  # (b, V): 2 sum_k w_k^2 rho_x(k) rho_y(k)
    factor.add_(1.0).clamp_(min=1.0, max=n_frames / 4.0)  # T_eff in [4, T]
    return z.mul_(factor.reciprocal_().mul_(n_frames).sub_(3.0).sqrt_())


class _Accumulator:
    """Running per-AN and per-voxel summaries over AN blocks."""

    def __init__(self, n_an, n_vox, dev):
        self.per_an = {k: np.zeros(n_an, dtype) for k, dtype in
                       (("n_pos", np.int64), ("n_neg", np.int64), ("peak_r", np.float32),
                        ("peak_voxel", np.int64), ("z_threshold", np.float32))}
        self.bn_count = torch.zeros(n_vox, dtype=torch.int64, device=dev)
        self.best_r = torch.zeros(n_vox, dtype=torch.float32, device=dev)
        self.entries = []

    def add(self, start, r, z, zcrit):
        """r, z: (b, V) of ANs start..start+b; zcrit: (V,) BH critical |z|."""
        absz = z.abs()
        k = bh_counts(absz, zcrit)
        thr = torch.where(k > 0, zcrit[(k - 1).clamp(min=0)],
                          torch.full_like(zcrit[:1], float("inf")).expand(len(k)))
        sig = absz >= thr[:, None]
        sl = slice(start, start + r.shape[0])
        self.per_an["n_pos"][sl] = (sig & (r > 0)).sum(1).cpu().numpy()
        self.per_an["n_neg"][sl] = (sig & (r < 0)).sum(1).cpu().numpy()
        self.per_an["z_threshold"][sl] = thr.cpu().numpy()
        absr = r.abs()
        peak = absr.argmax(1)
        self.per_an["peak_voxel"][sl] = peak.cpu().numpy()
        self.per_an["peak_r"][sl] = r.gather(1, peak[:, None])[:, 0].cpu().numpy()
        self.bn_count += sig.sum(0)
        block_best = r.gather(0, absr.argmax(0)[None, :])[0]
        self.best_r = torch.where(block_best.abs() > self.best_r.abs(), block_best, self.best_r)
        an, vox = torch.nonzero(sig, as_tuple=True)
        self.entries.append(((an + start).cpu().numpy(), vox.cpu().numpy(),
                             r[an, vox].cpu().numpy(), z[an, vox].cpu().numpy()))

    def result(self, n_frames) -> AssociationResult:
        if self.entries:
            an, vox, rr, zz = (np.concatenate(parts) for parts in zip(*self.entries))
        else:
            an, vox = np.zeros(0, np.int64), np.zeros(0, np.int64)
            rr, zz = np.zeros(0, np.float32), np.zeros(0, np.float32)
        return AssociationResult(
            **self.per_an, bn_count=self.bn_count.cpu().numpy(),
            best_r=self.best_r.cpu().numpy(), an_index=an.astype(np.int64),
            voxel_index=vox.astype(np.int64), r=rr.astype(np.float32),
            z=zz.astype(np.float32), p=p_from_z(zz), n_frames=n_frames)
