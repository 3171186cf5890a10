"""Every AN regressor against every in-mask voxel: signed Pearson r, calibrated z, BH-FDR per AN.

The AN x voxel matrix is never held whole. ANs are processed in blocks of ``block_size`` and,
within a block, voxels in tiles of ``tile`` (so that the statistics of a tile are computed while
it is in cache): each tile's r = x_block^T y_tile, the per-AN and per-voxel peaks, and the
*candidates*, the entries with |r| >= r0 where r0 is the smallest |r| that can reach the
smallest BH critical |z| (T_eff <= T). Only candidates get a z and enter BH
(:mod:`bids_vlm.encoding.fdr`); only per-AN summaries, per-voxel summaries and the significant
entries are kept. Runs on the GPU when ``device`` is a CUDA device.

Significance (``autocorr``):

- ``"bartlett"`` (default): z = atanh(r) sqrt(T_eff - 3), T_eff from Bartlett's variance of r
  for two autocorrelated series (:mod:`bids_vlm.encoding.autocorr`).
- ``"none"``: frames treated as independent (T_eff = T); anti-conservative for BOLD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bids_vlm.encoding.autocorr import BartlettCorrection
from bids_vlm.encoding.fdr import bh_select, bh_z_thresholds, p_from_z
from bids_vlm.progress import progress as progress_bar

AUTOCORR_METHODS = ("bartlett", "none")
TILE = 2048  # voxels per tile on the CPU (a tile's statistics stay in cache)
TILE_CUDA = 65536  # on a GPU, fewer and larger tiles
# bytes per AN x voxel element of a tile (r, |r|, factors, mask) and per candidate entry
_TILE_BYTES = 16
_CANDIDATE_BYTES = 28


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


def normalize_columns(x, chunk: int = 65536) -> torch.Tensor:
    """Centre the columns of x (T, n) and scale them to unit norm; constant columns -> 0.

    Returns a new float32 tensor (one copy of x; columns processed in chunks).
    """
    out = torch.as_tensor(np.asarray(x), dtype=torch.float32).clone()
    for start in range(0, out.shape[1], chunk):
        part = out[:, start:start + chunk]
        part -= part.mean(0)
        norm = part.square().sum(0).sqrt()
        part *= torch.where(norm > 1e-6, 1.0 / norm.clamp(min=1e-30), 0.0)
    return out


def memory_bound(n_frames: int, n_an: int, n_vox: int, block_size: int,
                 candidate_fraction: float = 0.5, tile: int = TILE) -> int:
    """Upper bound (bytes) of the association's working memory, significant entries aside.

    The inputs and their normalised float32 copies (8 bytes per frame x column), a tile's
    temporaries, and a block's candidates (at most ``candidate_fraction`` of its elements).
    """
    inputs = 8 * n_frames * (n_an + n_vox)
    block = block_size * (min(tile, n_vox) * _TILE_BYTES
                          + n_vox * candidate_fraction * _CANDIDATE_BYTES)
    return int(inputs + block)


def block_size_for_memory(mem_bytes: int, n_frames: int, n_an: int, n_vox: int,
                          tile: int = TILE) -> int:
    """The largest AN block (at least 1) whose :func:`memory_bound` fits in ``mem_bytes``
    (``tile``: the voxel tile of the device, :data:`TILE` or :data:`TILE_CUDA`)."""
    fixed = memory_bound(n_frames, n_an, n_vox, 0, tile=tile)
    per_an = memory_bound(n_frames, n_an, n_vox, 1, tile=tile) - fixed
    if mem_bytes - fixed < per_an:
        raise MemoryError(f"--mem {mem_bytes / 2**20:.0f} MiB is too little for {n_frames} "
                          f"frames x ({n_an} ANs + {n_vox} voxels): at least "
                          f"{(fixed + per_an) / 2**20:.0f} MiB needed")
    return int(min(n_an, (mem_bytes - fixed) // per_an))


def associate(regressors, voxels, q=0.05, block_size=256, device="cpu", progress=False,
              desc="association", run_lengths=None, autocorr="bartlett",
              n_lags=None) -> AssociationResult:
    """Association of every column of ``regressors`` (T, N) with every column of ``voxels`` (T, V).

    run_lengths: frames per run (sum T); default one run. Both inputs are normalised here
    (centred, unit norm over all frames), so r is their inner product.
    """
    n_frames, n_an = regressors.shape
    run_lengths = _check(regressors, voxels, run_lengths, autocorr)
    dev = torch.device(device)
    y = normalize_columns(voxels).to(dev)
    xt = normalize_columns(regressors).T.contiguous()  # (N, T): blocks are contiguous rows
    zcrit = torch.from_numpy(bh_z_thresholds(y.shape[1], q).astype(np.float32)).to(dev)
    bartlett = BartlettCorrection(y, run_lengths, n_lags) if autocorr == "bartlett" else None
    acc = _Accumulator(n_an, y.shape[1], dev)
    # |z| <= atanh|r| sqrt(T - 3) as T_eff <= T: below r0 no entry reaches min(zcrit)
    r0 = math.tanh(float(zcrit[-1]) / math.sqrt(n_frames - 3))
    for start in progress_bar(range(0, n_an, block_size), progress, desc=desc, unit="block"):
        xb = xt[start:start + block_size].to(dev)
        acf_b = bartlett.for_block(xb.T) if bartlett is not None else None
        rows, cols, r_c, fac_c = _scan_tiles(xb, y, r0, acc, start, bartlett, acf_b,
                                             TILE if dev.type == "cpu" else TILE_CUDA)
        acc.add_significant(start, xb.shape[0], rows, cols, r_c,
                            _z(r_c, fac_c, n_frames), zcrit)
    return acc.result(n_frames)


def _check(regressors, voxels, run_lengths, autocorr):
    n_frames = regressors.shape[0]
    if voxels.shape[0] != n_frames:
        raise ValueError(f"regressors have {n_frames} frames, voxels {voxels.shape[0]}")
    if autocorr not in AUTOCORR_METHODS:
        raise ValueError(f"autocorr must be one of {AUTOCORR_METHODS}, not '{autocorr}'")
    run_lengths = list(run_lengths) if run_lengths is not None else [n_frames]
    if sum(run_lengths) != n_frames:
        raise ValueError(f"run lengths {run_lengths} do not add up to {n_frames} frames")
    return run_lengths


def _scan_tiles(xb, y, r0, acc, start, bartlett, acf_b, tile=TILE):
    """r of one AN block tile by tile: update the peaks, return the candidates
    (rows, cols, r, Bartlett factor or None) with |r| >= r0."""
    found = []
    for s in range(0, y.shape[1], tile):
        r = xb @ y[:, s:s + tile]  # (b, t)
        absr = r.abs()
        acc.update_peaks(start, s, r, absr)
        rows, cols = torch.nonzero(absr >= r0, as_tuple=True)
        fac = None
        if bartlett is not None:
            fac = (acf_b @ bartlett.acf_y[:, s:s + tile])[rows, cols]
        found.append((rows, cols + s, r[rows, cols], fac))
    rows, cols, r_c, fac = zip(*found)
    return (torch.cat(rows), torch.cat(cols), torch.cat(r_c),
            torch.cat(fac) if bartlett is not None else None)


def _z(r, factor, n_frames):
    """(E,) z = atanh(r) sqrt(T_eff - 3), T_eff = T / (1 + factor) in [4, T] (T without factor)."""
    z = torch.atanh(r.clamp(-1 + 1e-6, 1 - 1e-6))
    if factor is None:
        return z * math.sqrt(n_frames - 3)
    return z * (n_frames / (factor + 1.0).clamp(min=1.0, max=n_frames / 4.0) - 3.0).sqrt()


class _Accumulator:
    """Running per-AN and per-voxel summaries over AN blocks and voxel tiles."""

    def __init__(self, n_an, n_vox, dev):
        self.per_an = {k: np.zeros(n_an, dtype) for k, dtype in
                       (("n_pos", np.int64), ("n_neg", np.int64), ("z_threshold", np.float32))}
        self.peak_abs = torch.full((n_an,), -1.0, device=dev)
        self.peak_r = torch.zeros(n_an, device=dev)
        self.peak_voxel = torch.zeros(n_an, dtype=torch.int64, device=dev)
        self.bn_count = torch.zeros(n_vox, dtype=torch.int64, device=dev)
        self.best_r = torch.zeros(n_vox, dtype=torch.float32, device=dev)
        self.entries = []

    def update_peaks(self, start, s, r, absr):
        """r, absr: (b, t) of ANs start.. and voxels s..; update per-AN and per-voxel peaks."""
        sl = slice(start, start + r.shape[0])
        value, index = absr.max(1)
        better = value > self.peak_abs[sl]
        self.peak_abs[sl] = torch.where(better, value, self.peak_abs[sl])
        self.peak_r[sl] = torch.where(better, r.gather(1, index[:, None])[:, 0], self.peak_r[sl])
        self.peak_voxel[sl] = torch.where(better, index + s, self.peak_voxel[sl])
        col_best = r.gather(0, absr.max(0).indices[None, :])[0]
        best = self.best_r[s:s + r.shape[1]]
        self.best_r[s:s + r.shape[1]] = torch.where(col_best.abs() > best.abs(), col_best, best)

    def add_significant(self, start, b, rows, cols, r, z, zcrit):
        """BH over the candidates (rows, cols, r, z) of ANs start..start+b; keep discoveries."""
        keep, thr = bh_select(rows, z.abs(), b, zcrit)
        an, vox, r_sig = rows[keep], cols[keep], r[keep]
        sl = slice(start, start + b)
        n_pos = torch.bincount(an[r_sig > 0], minlength=b)
        self.per_an["n_pos"][sl] = n_pos.cpu().numpy()
        self.per_an["n_neg"][sl] = (torch.bincount(an, minlength=b) - n_pos).cpu().numpy()
        self.per_an["z_threshold"][sl] = thr.cpu().numpy()
        self.bn_count += torch.bincount(vox, minlength=self.bn_count.shape[0])
        self.entries.append(((an + start).cpu().numpy(), vox.cpu().numpy(),
                             r_sig.cpu().numpy(), z[keep].cpu().numpy()))

    def result(self, n_frames) -> AssociationResult:
        if self.entries:
            an, vox, rr, zz = (np.concatenate(parts) for parts in zip(*self.entries))
        else:
            an, vox = np.zeros(0, np.int64), np.zeros(0, np.int64)
            rr, zz = np.zeros(0, np.float32), np.zeros(0, np.float32)
        return AssociationResult(
            **self.per_an, peak_r=self.peak_r.cpu().numpy(),
            peak_voxel=self.peak_voxel.cpu().numpy(), bn_count=self.bn_count.cpu().numpy(),
            best_r=self.best_r.cpu().numpy(), an_index=an.astype(np.int64),
            voxel_index=vox.astype(np.int64), r=rr.astype(np.float32),
            z=zz.astype(np.float32), p=p_from_z(zz), n_frames=n_frames)
