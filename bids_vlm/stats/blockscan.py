"""One block of ANs against every voxel, tile by tile: peaks, a screening statistic, BH per AN.

For each voxel tile, r = x_block y_tile (one matrix product) and, with the tile in cache, the
per-AN and per-voxel peaks of |r| and the screening statistic

    u = s^2 r^2 / (1 - r^2) >= z^2,    s^2 = T_eff - 3,  z = atanh(r) s

(atanh(r)^2 <= r^2 / (1 - r^2) as u = tanh(a) cosh(a) = sinh(a) >= a for a = atanh|r|), with the
sign of r, stored for the whole block (4 bytes per AN x voxel, plus the maximum of |u| over every
:data:`CHUNK` voxels). T_eff comes from the Bartlett factors, a small matrix product of the
autocorrelations (:mod:`bids_vlm.stats.autocorr`). Each AN's count of u >= zcrit[-1]^2
bounds its number of BH discoveries n, so no discovery has |z| < zcrit[n - 1]: after the last
tile only the chunks whose maximum reaches zcrit[n - 1]^2 are read again, their entries with
u above it get their exact z, and BH runs on those candidates. No transcendental function is
evaluated for the other entries.

On the CPU (compiled: :mod:`bids_vlm.stats.kernels`, :mod:`bids_vlm.stats.readback`) each AN's
entries are read back in one pass, n is tightened to BH's count on u (the largest k with
#{u >= zcrit[k - 1]^2} >= k, from counts in bins) and exactly those n candidates are kept;
their exact z come from the same float32 operations as on CUDA, and BH per AN counts the |z|
in bins (:func:`bids_vlm.stats.bhcount.bh_count`), with p and the Simes p in the same pass
(:func:`bids_vlm.stats.fdr.select_rows`): nothing is sorted whole. On CUDA the bound is
tightened by counting passes and BH iterates (:func:`bids_vlm.stats.fdr.bh_select`). Either
way a block's discoveries come by AN, then voxel (on the CPU in buffers the scanner reuses:
they are placed before it scans again); :class:`bids_vlm.stats.entries.Accumulator` collects
the blocks' results and applies the FDR scope across ANs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bids_vlm.stats import fdr, kernels, readback
from bids_vlm.stats.backends import get_backend
from bids_vlm.stats.fdr import bh_select
from bids_vlm.stats.pvalues import p_from_z
from bids_vlm.stats.bhcount import F32_SHIFT, bh_work, rank_bins
from bids_vlm.stats.kernels import CHUNK, NO_FACTORS, tile_stats

SLACK = 1e-5  # relative margin of the screening comparisons (float rounding of u and z)
GROUP = 65536  # candidates (by their first bound) read back and resolved at once on the CPU
CANDIDATE_FRACTION = 0.05  # candidates kept at once, as a fraction of a block's entries


@dataclass
class Voxels:
    """Voxels prepared once for all blocks.

    y: (Vp, T) one row per voxel, centred and scaled to unit norm, zero rows padding V to Vp, a
    multiple of CHUNK; acf: (Vp, K + 1) the voxel side of the null variance of r: for
    ``exact`` the factors of :func:`bids_vlm.stats.autocorr.noise_factors`, for ``bartlett``
    autocorrelations at lags 1..K and a last column of ones (None for ``none``); n_vox: V;
    n_dof: the frames' degrees of freedom,
    T minus the dimensions the cleaning projected out (0 for T); run_lengths: frames per run.
    """

    y: torch.Tensor
    acf: torch.Tensor | None
    n_vox: int
    n_dof: int = 0  # dimensions the data live in (T minus those cleaning removed); 0 = T
    run_lengths: tuple = ()
    autocorr: str = "bartlett"  # how acf was made: "exact" (noise factors), "bartlett", "none"


@dataclass
class BlockResult:
    """Per AN of a block (b,): peak_r, peak_voxel, n_pos, n_neg, z_threshold; p_an (numpy),
    the Simes p of its discoveries (NaN without). Discoveries (E,), by AN then voxel: rows (AN
    within the block), cols (voxel), r, z (signed; their two-sided p is
    :func:`bids_vlm.stats.pvalues.p_values` of z). On the CPU the discoveries are views of the
    scanner's buffers, valid until its next scan."""

    peak_r: torch.Tensor
    peak_voxel: torch.Tensor
    n_pos: torch.Tensor
    n_neg: torch.Tensor
    z_threshold: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    r: torch.Tensor
    z: torch.Tensor
    p_an: np.ndarray | None = None


class BlockScanner:
    """Buffers of one worker for blocks of up to ``max_block`` ANs, and best_r (Vp,), the signed
    r of largest |r| of every voxel over the blocks it scanned. fused: a tile's statistics in one
    compiled pass (default on the CPU) rather than torch operations (default on CUDA)."""

    def __init__(self, vox: Voxels, max_block: int, tile: int, zcrit: torch.Tensor,
                 fused: bool | None = None):
        dev, n_pad = vox.y.device, vox.y.shape[0]
        self.vox, self.tile, self.zcrit = vox, min(tile, n_pad), zcrit
        self.fused = get_backend(dev).compiled if fused is None else fused  # compiled pass
        self.n_frames = vox.n_dof or vox.y.shape[1]  # degrees of freedom of the frames
        zz = zcrit.double().square() * (1.0 - SLACK)
        self.u_crit = torch.cat([zz, zz.new_full((1,), float("inf"))]).float()  # [k-1]; [-1]: inf
        self.tmp = torch.empty(4, max_block * self.tile, device=dev)
        self.u = torch.empty(max_block * n_pad, device=dev)
        self.u_max = torch.empty(max_block * n_pad // CHUNK, device=dev)
        self.best_r = torch.zeros(n_pad, device=dev)
        self._maps, self._scratch = {}, {}
        if self.fused:  # BH's critical values as bits, and their bins
            self._u_crit, self._z_crit = self.u_crit[:-1].numpy(), zcrit.numpy()
            self._u_bins, self._z_bins = (rank_bins(v.view(np.int32).astype(np.int64), F32_SHIFT)
                                          for v in (self._u_crit, self._z_crit))
            self._work = bh_work(n_pad)  # BH's scratch, reused by every group

    def _tiles(self, b):
        """(start, stop, u view (b, w), u_max view (b, w / CHUNK)) of every voxel tile."""
        n_pad = self.vox.y.shape[0]
        for s in range(0, n_pad, self.tile):
            e = min(s + self.tile, n_pad)
            yield (s, e, self.u[b * s:b * e].view(b, e - s),
                   self.u_max[b * s // CHUNK:b * e // CHUNK].view(b, (e - s) // CHUNK))

    def scan(self, xb: torch.Tensor, acf_b: torch.Tensor | None, slot: int = 0) -> BlockResult:
        """Peaks, and BH per AN over voxels. xb (b, T): normalised regressors of the block;
        acf_b (b, K + 1): their weighted autocorrelations / T with a last column 1 / T (None
        without the Bartlett correction). slot: which of the scanner's two sets of buffers
        holds the discoveries (compiled path), so that one block's can wait to be copied
        while the next block is scanned."""
        b = xb.shape[0]
        peak_r, peak_voxel, n_screen = self._pass(xb, acf_b)
        if self.fused:
            return self._scan_fused(b, acf_b, peak_r, peak_voxel,
                                    n_screen.numpy().astype(np.int64), slot)
        rows, cols, u = self._candidates(b, n_screen.long())
        r_abs, z_abs = self._exact(rows, cols, u.abs(), acf_b)
        keep, thr = bh_select(rows, z_abs, b, self.zcrit)
        rows, cols, sign = rows[keep], cols[keep], torch.sign(u[keep])
        order = torch.argsort(rows * self.vox.y.shape[0] + cols)  # by AN, then voxel
        rows, cols, sign, r_abs, z_abs = (a[order] for a in (rows, cols, sign, r_abs[keep],
                                                              z_abs[keep]))
        n_pos, z = torch.bincount(rows[sign > 0], minlength=b), sign * z_abs
        n_neg, p = torch.bincount(rows, minlength=b) - n_pos, p_from_z(z.cpu().numpy())
        return BlockResult(peak_r=peak_r, peak_voxel=peak_voxel, n_pos=n_pos, n_neg=n_neg,
                           z_threshold=thr, rows=rows, cols=cols, r=sign * r_abs, z=z,
                           p_an=fdr.simes_rows(p, (n_pos + n_neg).cpu().numpy(),
                                               self.vox.n_vox))

    def _scan_fused(self, b, acf_b, peak_r, peak_voxel, n_screen, slot=0):
        """BH per AN, compiled, for groups of ANs whose candidates stay in cache: BH's count on
        u bounds each AN's discoveries (k), its entries with u >= u_crit[k - 1] get their exact
        z, BH's count on them selects. n_screen (b,): each AN's count of u >= zcrit[-1]^2, a
        first bound."""
        start = np.where(n_screen > 0, self._u_crit[np.maximum(n_screen, 1) - 1], np.inf)
        ends = np.cumsum(n_screen)
        out = tuple(self._buffer(key, int(ends[-1]), dtype) for key, dtype in
                    enumerate((np.int32, np.int32, np.float32, np.float32), 7 + 4 * slot))
        per_an = (np.full(b, np.inf, np.float32), np.zeros(b, np.int64), np.zeros(b, np.int64),
                  np.full(b, np.nan))
        n, first = 0, 0
        while first < b:  # rows first..stop - 1: up to GROUP candidates, at least one row
            done = int(ends[first - 1]) if first else 0
            stop = max(first + 1, int(np.searchsorted(ends, done + GROUP, "right")))
            cand = self._gather(b, start, acf_b, int(ends[stop - 1]) - done, (first, stop))
            n += fdr.select_rows(cand, len(cand[0]), self._z_crit, self._z_bins,
                                 self.vox.n_vox, per_an, out, n, self._work)
            first = stop
        rows, cols, r, z = (torch.from_numpy(a[:n]) for a in out[:4])
        thr, n_pos, n_neg = (torch.from_numpy(a) for a in per_an[:3])
        return BlockResult(peak_r=peak_r, peak_voxel=peak_voxel, n_pos=n_pos, n_neg=n_neg,
                           z_threshold=thr, rows=rows, cols=cols, r=r, z=z, p_an=per_an[3])

    def _gather(self, b, start, acf_b, room, rows=None):
        """(rows, cols, u, |r|, |z|) of the block's entries with |u| >= start[row] (b,) (at
        most ``room``), by row then voxel; with ``rows`` (first, stop), of those rows and only
        those within BH's count on u, in buffers this scanner reuses. Read back and their
        factors summed by compiled loops, the rest by the IEEE operations of :meth:`_exact`
        and the same torch atanh (so the same values, up to the rounding of the factors'
        sums)."""
        rows_c, cols_c, u = (self._buffer(i, -(-room // 64) * 64 + 1, d) for i, d in
                             enumerate((np.int32, np.int32, np.float32)))
        n = readback.read_back(self.u[:b * self.vox.y.shape[0]].numpy(), self.u_max.numpy(), b,
                               self.tile, start, (rows_c, cols_c, u), np.zeros(b, np.int64),
                               *((self._u_crit, self._u_bins, rows) if rows else ()),
                               work=self._work)
        padded = -(-n // 64) * 64  # torch's vector path for every entry (not its tail's)
        f, s2, r, z = (self._buffer(i, padded, np.float32) for i in range(3, 7))
        u[n:padded + 1], f[n:] = 1.0, 0.25
        if acf_b is not None:  # (1 + Bartlett factor) / D, as in _exact (up to rounding)
            readback.factors(acf_b.numpy(), self.vox.acf.numpy(), rows_c[:n], cols_c[:n], f[:n])
        readback.abs_r(u[:padded], None if acf_b is None else f, self.n_frames, s2, r, z)
        torch.from_numpy(z).atanh_().mul_(torch.from_numpy(s2).sqrt_())  # z: |r| clamped
        return rows_c[:n], cols_c[:n], u[:n], r[:n], z[:n]

    def _buffer(self, key, size, dtype):
        """The first ``size`` elements of a scratch array this scanner keeps (grown if needed)."""
        have = self._scratch.get(key)
        if have is None or len(have) < size:
            have = self._scratch[key] = np.empty(max(size, 1024), dtype)
        return have[:size]

    def count(self, xb, acf_b):
        """First pass of BH across all ANs and voxels: peaks, and per AN (b,) the count of
        u >= zcrit[-1]^2, which bounds its entries with |z| >= zcrit[-1]."""
        return self._pass(xb, acf_b)

    def above(self, xb, acf_b, u_threshold: float):
        """Second pass: (rows, cols, sign, |r|, |z|) of the entries with u >= u_threshold."""
        b = xb.shape[0]
        self._pass(xb, acf_b, peaks=False)
        crit = torch.full((b,), u_threshold, device=xb.device)
        if self.fused:
            room = int(self.counts_above(b, crit).sum())
            rows, cols, u, r, z = (torch.from_numpy(a.copy()) for a in
                                   self._gather(b, crit.numpy(), acf_b, room))
            return rows, cols, torch.sign(u), r, z
        rows, cols, u = (torch.cat(parts) for parts in zip(*self.entries_above(b, crit)))
        return (rows, cols, torch.sign(u), *self._exact(rows, cols, u.abs(), acf_b))

    def _pass(self, xb, acf_b, peaks=True):
        """Every tile: r (and the Bartlett factors), then the tile's statistics: the peaks
        (unless ``peaks`` is false), u with the sign of r and its chunk maxima. Returns per AN
        (b,): peak_r, peak_voxel, count of u >= zcrit[-1]^2."""
        b, dev = xb.shape[0], xb.device
        acc = (torch.full((b,), -1.0, device=dev), torch.zeros(b, device=dev),
               torch.zeros(b, dtype=torch.int64, device=dev), torch.zeros(b, device=dev))
        stats = self._fused_stats if self.fused else self._torch_stats
        for s, e, u_t, u_max in self._tiles(b):
            r, f, a, q = (buf[:b * (e - s)].view(b, e - s) for buf in self.tmp)
            torch.mm(xb, self.vox.y[s:e].T, out=r)
            if acf_b is not None:  # (1 + Bartlett factor) / D
                torch.mm(acf_b, self.vox.acf[s:e].T, out=f)
            stats(s, r, f if acf_b is not None else None, (a, q), u_t, u_max, peaks, acc)
        return acc[1], acc[2], acc[3]

    def _fused_stats(self, s, r, f, scratch, u_t, u_max, peaks, acc):
        """The tile's statistics in one compiled pass (:mod:`bids_vlm.stats.kernels`)."""
        n = self.n_frames
        tile_stats(r.numpy(), NO_FACTORS if f is None else f.numpy(), n - 3.0, 1.0 / n,
                   float(self.u_crit[-2]), u_t.numpy(), u_max.numpy(), acc[3].numpy(), s, peaks,
                   *(t.numpy() for t in acc[:3]), self.best_r.numpy())

    def _torch_stats(self, s, r, f, scratch, u_t, u_max, peaks, acc):
        """The tile's statistics from torch operations (CUDA); f is overwritten with u."""
        (a, q), b = scratch, r.shape[0]
        torch.abs(r, out=a).clamp_(max=1.0)
        if peaks:
            self._peaks(s, r, a, *acc[:3])
        if f is None:
            f = u_t
            f.fill_(self.n_frames - 3.0)
        else:  # clamped to T_eff in [4, D], -> T_eff - 3
            f.clamp_(1.0 / self.n_frames, 0.25).reciprocal_().sub_(3.0)
        torch.mul(a, a, out=q)
        f.div_(q.reciprocal_().sub_(1.0))  # u = s^2 / (1 / r^2 - 1)
        acc[3].add_(torch.sub(f, self.u_crit[-2], out=q).sign_().clamp_(min=0).sum(1))
        torch.amax(f.view(b, -1, CHUNK), 2, out=u_max)
        torch.copysign(f, r, out=u_t)

    def _peaks(self, s, r, a, peak_abs, peak_r, peak_voxel):
        """Per AN: largest |r| so far (first voxel on ties); per voxel: signed r of largest |r|
        (the positive one on ties)."""
        value = a.amax(1)
        better = torch.nonzero(value > peak_abs)[:, 0]
        if better.numel():
            index = a.index_select(0, better).argmax(1)
            peak_abs[better] = value[better]
            peak_r[better] = r[better, index]
            peak_voxel[better] = index + s
        high, low = r.amax(0), r.amin(0)
        tile_best = torch.where(high >= -low, high, low)  # ties of |r|: the positive r
        best = self.best_r[s:s + r.shape[1]]
        better = (tile_best.abs() > best.abs()) | ((tile_best.abs() == best.abs())
                                                   & (tile_best > best))
        best.copy_(torch.where(better, tile_best, best))

    def _candidates(self, b, n_screen):
        """(CUDA) Entries whose u reaches the lowest threshold any discovery of its AN can have:
        (rows, cols, signed u). BH's bound is tightened first by counting passes
        (k <- #{u >= zcrit[k-1]^2}, never larger, never below the discoveries) while a pass
        at least halves the candidates, and until they fit in :data:`CANDIDATE_FRACTION` of
        the block unless the bound stalls above it."""
        k, total = n_screen, int(n_screen.sum())
        cap = CANDIDATE_FRACTION * b * self.vox.n_vox
        while total > b:  # more than one candidate per AN on average
            k = self.counts_above(b, self.u_crit[k - 1])
            fewer = int(k.sum())
            if fewer == total or (fewer > total / 2 and fewer <= cap):
                break
            total = fewer
        # k = 0 -> inf; at most sum(k) entries reach u_crit[k - 1] (k only ever decreased)
        found = list(self.entries_above(b, self.u_crit[k - 1]))
        return tuple(torch.cat(parts) for parts in zip(*found))

    def counts_above(self, b, crit):
        """Per AN (b,) int64: the block's entries with |u| >= crit[row]."""
        if self.fused:
            counts = np.zeros(b, np.int64)
            kernels.entries_above(self._numpy_tiles(b), crit.numpy(), counts)
            return torch.from_numpy(counts)
        return sum(torch.bincount(rows, minlength=b) for rows, _, _ in self.entries_above(b, crit))

    def entries_above(self, b, crit):
        """(rows, cols, signed u) of the block's entries with |u| >= crit[row] (b,) by torch
        operations (CUDA; compiled: :meth:`_gather`), in pieces: only the chunks whose maximum
        reaches the threshold are read, a tile's worth of chunks at a time."""
        chunk_row, chunk_col = self._chunk_map(b)
        crit_chunk = crit[chunk_row]
        chunks = torch.nonzero(self.u_max[:chunk_row.shape[0]] >= crit_chunk)[:, 0]
        u = self.u[:b * self.vox.y.shape[0]].view(-1, CHUNK)
        piece = self.tmp.shape[1] // CHUNK
        for i in range(0, max(1, chunks.shape[0]), piece):
            g = chunks[i:i + piece]
            vals = u.index_select(0, g)
            hit = torch.nonzero((vals.abs() >= crit_chunk[g][:, None]).view(-1))[:, 0]
            g_hit = g[hit // CHUNK]
            yield chunk_row[g_hit], chunk_col[g_hit] + hit % CHUNK, vals.view(-1)[hit]

    def _numpy_tiles(self, b):
        """(first voxel, u (b, w), u_max (b, w / CHUNK)) numpy views of every tile."""
        return [(s, u_t.numpy(), u_max.numpy()) for s, _, u_t, u_max in self._tiles(b)]

    def _chunk_map(self, b):
        """(b Vp / CHUNK,) AN row and first voxel of every chunk of a b-AN block's u."""
        if b not in self._maps:
            rows, cols = [], []
            for s, e, _, _ in self._tiles(b):
                grid = torch.arange(b * (e - s) // CHUNK, device=self.u.device)
                rows.append(grid // ((e - s) // CHUNK))
                cols.append(s + grid % ((e - s) // CHUNK) * CHUNK)
            self._maps = {b: (torch.cat(rows), torch.cat(cols))}
        return self._maps[b]

    def _exact(self, rows, cols, u_abs, acf_b, chunk=65536):
        """|r| and |z| of the candidates from |u| and their T_eff (factors recomputed)."""
        n = self.n_frames
        if acf_b is None:
            s2 = torch.full_like(u_abs, n - 3.0)
        else:
            acf_t = self.vox.acf
            s2 = torch.cat([(acf_b[rows[i:i + chunk]] * acf_t[cols[i:i + chunk]]).sum(1)
                            for i in range(0, len(rows), chunk)] or [u_abs])
            s2 = 1.0 / s2.clamp(1.0 / n, 0.25) - 3.0
        r_abs = torch.rsqrt(1.0 + s2 / u_abs)  # r^2 = w / (1 + w), w = u / s^2
        return r_abs, torch.atanh(r_abs.clamp(max=1 - 1e-6)) * s2.sqrt()


def u_threshold(z: float) -> float:
    """The screening threshold on u for a critical |z| (with the float margin)."""
    return z * z * (1.0 - SLACK)


def pad_voxels(n_vox: int) -> int:
    """Vp: the voxel count padded to a multiple of :data:`CHUNK`."""
    return -(-n_vox // CHUNK) * CHUNK
