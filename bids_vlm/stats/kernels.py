"""Compiled CPU kernels of the association (numba): a tile's statistics, rows prepared.

:func:`tile_stats`: the per-tile statistics of :mod:`bids_vlm.stats.blockscan` in one pass.
After a tile's matrix products (r and, with the Bartlett correction, the factors f), torch would
need about 17 elementwise passes over the tile for |r|, the peaks, the screening statistic u, its
chunk maxima and the screening counts; here one compiled loop reads r and f once, keeps every
intermediate in registers and writes u. It releases the GIL, so the association's worker threads
run it at once. The same statistics on CUDA come from torch operations
(:meth:`bids_vlm.stats.blockscan.BlockScanner._torch_stats`); a test checks that both agree.
:func:`entries_above` reads back every entry of a block above a critical value.

:func:`prepare_rows`: columns of frames -> centred unit-norm rows and their autocorrelations
within runs, in one pass per column chunk (on CUDA: torch and the FFT of
:func:`bids_vlm.stats.autocorr.row_autocorrelations`).

BH's counts in bins are in :mod:`bids_vlm.stats.bhcount`; the candidates' read-back for BH per
AN and their exact z in :mod:`bids_vlm.stats.readback`.
"""
from __future__ import annotations

import numpy as np

from bids_vlm.jit import FAST, njit

CHUNK = 64  # voxels per maximum of |u| (a constant: the loops over a chunk unroll)
_FLAGS = set(FAST)  # not 'nnan' / 'ninf': u = inf at |r| = 1
_ABS = np.int32(0x7FFFFFFF)  # the bits of |x| of a float32 x
_ONE = np.int32(np.float32(1.0).view(np.int32))


def _jit(function, fastmath=_FLAGS, **extra):
    """:func:`bids_vlm.jit.njit` with the fast-math flags above by default."""
    return njit(function, fastmath=fastmath, **extra)


@_jit
def _stats(r, f, s2_const, f_lo, u_crit, u_out, u_max, n_screen, col0,
           peaks, peak_abs, peak_r, peak_voxel, best_r):  # pragma: no cover - compiled
    # Maxima of non-negative float32 values are taken over their bits as int32 (the same order),
    # so that the loops vectorise; floats would need NaN-aware maxima that do not.
    b, w = r.shape
    use_f = f.shape[0] > 0
    one, zero = np.float32(1.0), np.float32(0.0)
    top_bits, u_max_bits = peak_abs.view(np.int32), u_max.view(np.int32)
    best = best_r[col0:col0 + w]  # a slice, so that the loop over it vectorises
    for i in range(b):
        ri, ui = r[i], u_out[i]
        r_bits, u_bits = ri.view(np.int32), ui.view(np.int32)
        count, top = zero, top_bits[i]
        for c in range(w // CHUNK):
            j0 = c * CHUNK
            if use_f:  # two copies of the loop, not a branch inside one: each vectorises
                fi = f[i]
                for j in range(j0, j0 + CHUNK):
                    s2 = one / min(max(fi[j], f_lo), np.float32(0.25)) - np.float32(3.0)
                    rv = ri[j]
                    a = min(abs(rv), one)
                    a2 = a * a
                    u = s2 * a2 / (one - a2)
                    ui[j] = u if rv >= zero else -u
                    count += one if u >= u_crit else zero
            else:
                for j in range(j0, j0 + CHUNK):
                    rv = ri[j]
                    a = min(abs(rv), one)
                    a2 = a * a
                    u = s2_const * a2 / (one - a2)
                    ui[j] = u if rv >= zero else -u
                    count += one if u >= u_crit else zero
            u_top, a_top = np.int32(0), np.int32(0)
            for j in range(j0, j0 + CHUNK):
                u_top = max(u_top, u_bits[j] & _ABS)
                a_top = max(a_top, r_bits[j] & _ABS)
            u_max_bits[i, c] = u_top
            a_top = min(a_top, _ONE)
            if peaks and a_top > top:  # a new largest |r| of the AN: its first voxel
                top = a_top
                for j in range(j0, j0 + CHUNK):
                    if min(r_bits[j] & _ABS, _ONE) == a_top:
                        peak_r[i], peak_voxel[i] = ri[j], col0 + j
                        break
        if peaks:
            top_bits[i] = top
            for j in range(w):  # ties of |r|: the positive r, whatever the ANs' order
                rv, bv = ri[j], best[j]
                ra, ba = abs(rv), abs(bv)
                best[j] = rv if ra > ba or (ra == ba and rv > bv) else bv
        n_screen[i] += count


def tile_stats(r, f, s2_const, f_lo, u_crit, u_out, u_max, n_screen, col0, peaks,
               peak_abs, peak_r, peak_voxel, best_r):
    """One tile's statistics, in place (all arrays float32 numpy views of torch CPU tensors).

    r (b, w): correlations of the block's b ANs with voxels col0..col0 + w; f (b, w): their
    Bartlett factors / D (then s2 = 1 / clip(f, f_lo, 1/4) - 3), or shape (0, 0) for the constant
    s2 = ``s2_const``. Writes u_out (b, w) = sign(r) s2 r^2 / (1 - r^2) and u_max (b, w / CHUNK),
    the maximum |u| of every ``CHUNK`` voxels; adds to n_screen (b,) the count of u >= ``u_crit``.
    With ``peaks``: per AN (b,) peak_abs / peak_r / peak_voxel (largest |r|, first voxel on
    ties) and per voxel best_r (the signed r of largest |r|, the positive one on ties, so that
    the order in which blocks are scanned does not matter; indexed col0 + j) are updated.
    """
    _stats(r, f, np.float32(s2_const), np.float32(f_lo), np.float32(u_crit), u_out,
           u_max, n_screen, col0, peaks, peak_abs, peak_r, peak_voxel, best_r)


NO_FACTORS = np.zeros((0, 0), np.float32)


@_jit
def _above(u, u_max, crit, col0, rows, cols, vals, n, counts):  # pragma: no cover - compiled
    b, w = u.shape
    store = rows.shape[0] > 0
    for i in range(b):
        level = crit[i]
        for c in range(w // CHUNK):
            if u_max[i, c] >= level:
                for j in range(c * CHUNK, (c + 1) * CHUNK):
                    if abs(u[i, j]) >= level:
                        counts[i] += 1
                        if store:
                            if n < rows.shape[0]:  # never past the arrays (n is checked)
                                rows[n], cols[n], vals[n] = i, col0 + j, u[i, j]
                            n += 1
    return n


def entries_above(tiles, crit, counts, out=None):
    """The entries of a block's u with |u| >= crit[row] (b,), reading only the chunks whose
    maximum reaches it. tiles: (first voxel, u (b, w), u_max (b, w / CHUNK)) of every tile,
    float32 arrays. Adds each row's count to counts (b,) int64; with ``out`` = (rows, cols,
    vals), arrays with room for them all, also writes the entries there (AN row, voxel, signed
    u, in row order within each tile). Returns how many there are."""
    rows, cols, vals = out or (np.zeros(0, np.int64), np.zeros(0, np.int64),
                               np.zeros(0, np.float32))
    n = 0
    for col0, u, u_max in tiles:
        n = _above(u, u_max, crit, col0, rows, cols, vals, n, counts)
    if out is not None and n > len(rows):
        raise RuntimeError(f"{n} entries reach the threshold, room for {len(rows)}")
    return int(counts.sum()) if out is None else n


@_jit
def _prepare(cols, run_starts, rows, acf):  # pragma: no cover - compiled
    n_frames, n = cols.shape
    n_lags = acf.shape[1]
    zero = np.float32(0.0)
    for t0 in range(0, n_frames, 16):  # transposed in blocks of 16 frames (64-byte rows)
        for j in range(n):
            for t in range(t0, min(t0 + 16, n_frames)):
                rows[j, t] = cols[t, j]
    seg = np.empty(n_frames, np.float32)
    lagged = np.empty(n_lags, np.float64)
    for j in range(n):
        x = rows[j]
        mean = x.sum() / n_frames
        ss = zero
        for t in range(n_frames):
            x[t] -= mean
            ss += x[t] * x[t]
        norm = np.sqrt(ss)
        scale = np.float32(1.0) / norm if norm > 1e-6 else zero
        for t in range(n_frames):
            x[t] *= scale
        if n_lags == 0:
            continue
        lagged[:] = 0.0
        den = 0.0
        for r in range(len(run_starts) - 1):
            start, length = run_starts[r], run_starts[r + 1] - run_starts[r]
            run_mean = x[start:start + length].sum() / length
            ss = zero
            for t in range(length):
                seg[t] = x[start + t] - run_mean
                ss += seg[t] * seg[t]
            den += ss
            for k in range(1, min(n_lags, length - 1) + 1):
                total = zero
                for t in range(length - k):
                    total += seg[t] * seg[t + k]
                lagged[k - 1] += total
        for k in range(n_lags):
            acf[j, k] = lagged[k] / den if den > 1e-12 else 0.0


def prepare_rows(cols, run_lengths, rows, acf=None):
    """cols (T, n) array (any strides) -> rows (n, T) float32, centred and scaled to unit norm
    (constant columns -> 0), and acf (n, K) their autocorrelations at lags 1..K within runs
    (rows centred per run; no lag crosses a run boundary; pooled over runs), both written in
    place; acf None: none computed. ``run_lengths`` sum to T."""
    starts = np.concatenate([[0], np.cumsum(run_lengths)]).astype(np.int64)
    _prepare(np.asarray(cols, dtype=np.float32), starts, rows,
             NO_FACTORS[:rows.shape[0]] if acf is None else acf)


def _jit_exact(function, **extra):
    """:func:`_jit` with IEEE semantics: operations in the written order, no fused multiply-add
    (for values that must equal those of the torch operations they replace)."""
    return _jit(function, fastmath=False, **extra)
