"""Every AN regressor against every in-mask voxel: signed Pearson r, p-values, BH-FDR per AN.

The AN x voxel matrix is never held whole: ANs are processed in blocks of ``block_size``
(one (block, n_voxels) matrix at a time, on the GPU when asked), and only per-AN summaries,
per-voxel summaries and the significant entries are kept.

Significance: the two-sided t-test of r with ``n_frames - 2`` degrees of freedom, which treats
frames as independent and is therefore anti-conservative for autocorrelated BOLD
(ASSOCIATION_METHOD names it in every output sidecar). Benjamini-Hochberg FDR over voxels for
each AN is applied on |r| directly: p is decreasing in |r|, so the BH step-up rule
``p_(k) <= q k / V`` becomes ``|r|_(k) >= r_crit(k)`` with ``r_crit`` computed once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats
from tqdm.auto import tqdm

ASSOCIATION_METHOD = ("Pearson r between each AN regressor and each voxel over all frames; "
                      "two-sided t-test with n_frames - 2 degrees of freedom (not corrected for "
                      "temporal autocorrelation); Benjamini-Hochberg FDR across in-mask voxels "
                      "for each AN")


@dataclass
class AssociationResult:
    """Summaries of one (n_frames x N) regressor block against (n_frames x V) voxels.

    Per AN (N,): n_pos / n_neg (BN+ / BN- counts), peak_r (signed r of largest |r|),
    peak_voxel (its voxel index), r_threshold (BH critical |r|, inf when nothing passes).
    Per voxel (V,): bn_count (ANs with the voxel as BN), best_r (signed r of largest |r| over ANs).
    Significant entries (E,): an_index, voxel_index, r, p.
    """

    n_pos: np.ndarray
    n_neg: np.ndarray
    peak_r: np.ndarray
    peak_voxel: np.ndarray
    r_threshold: np.ndarray
    bn_count: np.ndarray
    best_r: np.ndarray
    an_index: np.ndarray
    voxel_index: np.ndarray
    r: np.ndarray
    p: np.ndarray
    n_frames: int


def normalize_columns(x: np.ndarray) -> np.ndarray:
    """Centre the columns of x (T, n) and scale them to unit norm; constant columns -> 0."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(x, axis=0, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12).astype(np.float32)


def r_from_t(t, df):
    return t / np.sqrt(df + t ** 2)


def p_from_r(r, n_frames):
    """Two-sided p of Pearson r with n_frames - 2 degrees of freedom."""
    df = n_frames - 2
    r = np.clip(np.abs(np.asarray(r, float)), 0.0, 1.0 - 1e-12)
    t = r * np.sqrt(df / (1.0 - r ** 2))
    return 2.0 * special.stdtr(df, -t)


def bh_r_thresholds(n_voxels: int, n_frames: int, q: float) -> np.ndarray:
    """(n_voxels,) critical |r| for rank k = 1..V of the BH step-up rule at level q."""
    df = n_frames - 2
    alphas = q * np.arange(1, n_voxels + 1) / n_voxels
    return r_from_t(stats.t.isf(alphas / 2.0, df), df)


def associate(regressors, voxels, q=0.05, block_size=256, device="cpu", progress=False,
              desc="association") -> AssociationResult:
    """Association of every column of ``regressors`` (T, N) with every column of ``voxels`` (T, V).

    Both are normalised here (centred, unit norm), so r is their inner product.
    """
    n_frames, n_an = regressors.shape
    if voxels.shape[0] != n_frames:
        raise ValueError(f"regressors have {n_frames} frames, voxels {voxels.shape[0]}")
    dev = torch.device(device)
    y = torch.from_numpy(normalize_columns(voxels)).to(dev)
    x_all = normalize_columns(regressors)
    crit = torch.from_numpy(bh_r_thresholds(y.shape[1], n_frames, q).astype(np.float32)).to(dev)
    acc = _Accumulator(n_an, y.shape[1], dev)
    for start in tqdm(range(0, n_an, block_size), disable=not progress, desc=desc, unit="block"):
        x = torch.from_numpy(x_all[:, start:start + block_size]).to(dev)
        acc.add(start, x.T @ y, crit)
    return acc.result(n_frames)


class _Accumulator:
    """Running per-AN and per-voxel summaries over AN blocks."""

    def __init__(self, n_an, n_vox, dev):
        self.per_an = {k: np.zeros(n_an, dtype) for k, dtype in
                       (("n_pos", np.int64), ("n_neg", np.int64), ("peak_r", np.float32),
                        ("peak_voxel", np.int64), ("r_threshold", np.float32))}
        self.bn_count = torch.zeros(n_vox, dtype=torch.int64, device=dev)
        self.best_r = torch.zeros(n_vox, dtype=torch.float32, device=dev)
        self.entries = []

    def add(self, start, r, crit):
        """r: (b, V) correlations of ANs start..start+b; crit: (V,) BH critical |r|."""
        absr = r.abs()
        sorted_abs = absr.sort(dim=1, descending=True).values
        passes = sorted_abs >= crit[None, :]
        n_pass = torch.where(passes.any(1), passes.shape[1] - passes.flip(1).int().argmax(1),
                             torch.zeros_like(passes[:, 0], dtype=torch.int64))
        last = (n_pass - 1).clamp(min=0)
        thr = torch.where(n_pass > 0, sorted_abs.gather(1, last[:, None])[:, 0],
                          torch.full_like(sorted_abs[:, 0], float("inf")))
        sig = absr >= thr[:, None]
        self._store(start, r, absr, sig, thr)

    def _store(self, start, r, absr, sig, thr):
        sl = slice(start, start + r.shape[0])
        peak = absr.argmax(1)
        self.per_an["n_pos"][sl] = (sig & (r > 0)).sum(1).cpu().numpy()
        self.per_an["n_neg"][sl] = (sig & (r < 0)).sum(1).cpu().numpy()
        self.per_an["peak_voxel"][sl] = peak.cpu().numpy()
        self.per_an["peak_r"][sl] = r.gather(1, peak[:, None])[:, 0].cpu().numpy()
        self.per_an["r_threshold"][sl] = thr.cpu().numpy()
        self.bn_count += sig.sum(0)
        col = absr.argmax(0)
        block_best = r.gather(0, col[None, :])[0]
        self.best_r = torch.where(block_best.abs() > self.best_r.abs(), block_best, self.best_r)
        an, vox = torch.nonzero(sig, as_tuple=True)
        self.entries.append(((an + start).cpu().numpy(), vox.cpu().numpy(),
                             r[an, vox].cpu().numpy()))

    def result(self, n_frames) -> AssociationResult:
        if self.entries:
            an, vox, rr = (np.concatenate(parts) for parts in zip(*self.entries))
        else:
            an, vox, rr = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return AssociationResult(
            **self.per_an, bn_count=self.bn_count.cpu().numpy(),
            best_r=self.best_r.cpu().numpy(), an_index=an.astype(np.int64),
            voxel_index=vox.astype(np.int64), r=rr.astype(np.float32),
            p=p_from_r(rr, n_frames), n_frames=n_frames)
