"""A block's candidates read back for BH per AN, and their exact z (numba).

:func:`read_back` reads a block's candidates back row by row, in one pass over the chunks of
the screening statistic u, keeping per row BH's count on u (:mod:`bids_vlm.stats.bhcount`), for
BH per AN (:func:`bids_vlm.stats.fdr.select_rows`); :func:`factors` and :func:`abs_r` give
their exact z (the float32 operations of the torch code they replace, up to the order of a
sum).
"""
from __future__ import annotations

import numpy as np

from bids_vlm.stats.bhcount import _NONE, bh_count, bh_descend, bh_work
from bids_vlm.stats.kernels import _ABS, CHUNK, NO_FACTORS, _jit, _jit_exact

@_jit
def _read_back(u, u_max, b, tile, start, thr, first, count, shift, base, rows, cols, u_out,
               k_out, row0, row1, keys, buf):  # pragma: no cover - compiled
    n_pad = u.shape[0] // b
    bits, out_bits = u.view(np.int32), u_out.view(np.int32)
    last, n = rows.shape[0] - 1, 0  # the last slot takes the writes of entries not kept
    hist = np.empty(first.shape[0], np.int64)
    for i in range(row0, row1):
        level, low, n0 = start[i, 0], start[i].view(np.int32)[0], n
        for s in range(0, n_pad, tile):
            w = min(tile, n_pad - s)
            off, moff = b * s + i * w, (b * s) // CHUNK + i * (w // CHUNK)
            for c in range(w // CHUNK):
                if u_max[moff + c] >= level:
                    for j in range(off + c * CHUNK, off + (c + 1) * CHUNK):
                        at = min(n, last)  # branch-free, never past the arrays
                        cols[at], u_out[at] = s + j - off, u[j]
                        n += 1 if (bits[j] & _ABS) >= low else 0
        rows[n0:min(n, last)] = i  # the row, once for its entries
        k_out[i] = n - n0
        if thr.shape[0] == 0 or n == n0 or n > last:
            continue
        k = bh_descend(out_bits[n0:n], _ABS, thr, n - n0)
        if k < 0:  # the descent did not settle: BH's count from bins
            for e in range(n0, n):
                keys[e - n0] = out_bits[e] & _ABS
            k = bh_count(keys[:n - n0], thr, first, count, shift, base, hist, buf)
        level_k, kept = np.int32(thr[k - 1]) if k > 0 else _NONE, n0
        for e in range(n0, n):  # exactly k entries reach thr[k - 1]; branch-free
            cols[kept], u_out[kept] = cols[e], u_out[e]
            kept += 1 if (out_bits[e] & _ABS) >= level_k else 0
        k_out[i], n = k, kept
    return n


def read_back(u, u_max, b, tile, start, out, k_out, u_crit=None, layout=None, rows=None,
              work=None):
    """A block's entries with |u| >= start[row] (b,) float32, row by row, voxels in order
    (rows: (first, stop) to read only those rows; default all).

    u (b Vp,) and u_max (b Vp / CHUNK,): the block's statistic tile by tile (tiles of ``tile``
    voxels, each (b, w) row-major). out = (rows, cols (E + 1,) int32 or int64, u (E + 1,)
    float32): room for them all and one slot more. With u_crit (V,) float32 non-increasing
    and its :func:`rank_bins` layout, only those with |u| >= u_crit[k - 1] are kept, k the
    largest with #{|u| >= u_crit[k - 1]} >= k (BH's count on u: a bound of the row's
    discoveries, as z^2 <= u; ``start`` must not exceed u_crit[k - 1]). Writes each row's
    count (k) into k_out (b,) int64 and returns the total. work: :func:`bh_work` of at least
    Vp (reused scratch; allocated when None)."""
    thr, first, count, shift, base = np.zeros(0, np.int32), *(np.zeros(0, np.int64),) * 2, 0, 0
    if u_crit is not None:
        thr = u_crit.view(np.int32)  # the bits, in place (no copy at every call)
        first, count, shift, base = layout
    start = np.asarray(start, np.float32).reshape(-1, 1)
    n = _read_back(u, u_max, b, tile, start, thr, first, count, shift, base, *out, k_out,
                   *(rows or (0, b)), *(work or bh_work(len(u) // b)))
    if n > len(out[0]) - 1:
        raise RuntimeError(f"{n} entries reach the threshold, room for {len(out[0]) - 1}")
    return n


@_jit
def factors(a, b, rows, cols, out):  # pragma: no cover - compiled
    """out (m,) float32 = sum_t a[rows, t] b[cols, t] (a (b, K), b (Vp, K); rows, cols (m,)):
    each candidate's null variance factor, the dot product of its AN's and its voxel's lag
    factors (summed in float32 in a vectorised order: equal to torch's sum up to rounding)."""
    for e in range(rows.shape[0]):
        x, y = a[rows[e]], b[cols[e]]
        total = np.float32(0.0)
        for t in range(x.shape[0]):
            total += x[t] * y[t]
        out[e] = total


R_MAX = np.float32(1 - 1e-6)  # |r| is clamped to this before atanh (as torch.clamp does)


@_jit_exact
def _abs_r(u, f, f_lo, s2_const, s2, r, clamped):  # pragma: no cover - compiled
    one, quarter = np.float32(1.0), np.float32(0.25)
    clamped_too = clamped.shape[0] > 0
    for e in range(u.shape[0]):
        v = s2_const
        if f.shape[0]:  # clamped as torch clamps (NaN stays NaN)
            c = f_lo if f[e] < f_lo else f[e]
            v = one / (quarter if c > quarter else c) - np.float32(3.0)
        a = one / np.sqrt(one + v / abs(u[e]))
        s2[e], r[e] = v, a
        if clamped_too:  # |r| clamped for atanh (NaN stays NaN)
            clamped[e] = R_MAX if a > R_MAX else a


def abs_r(u, f, n_dof, s2, r, clamped=None):
    """|r| of candidates from their |u| (E,) and null variance factors f (E,) (None: T_eff =
    n_dof): s2 = T_eff - 3 = 1 / clip(f, 1 / n_dof, 1/4) - 3 and |r| = (1 + s2 / |u|)^-1/2,
    written into s2 and r (E,) float32: the IEEE float32 operations of
    :meth:`bids_vlm.stats.blockscan.BlockScanner._exact`, so the same values for the same f.
    With ``clamped`` (E,), also min(|r|, :data:`R_MAX`) there, as torch's clamp gives it
    (z = atanh(clamped) sqrt(s2))."""
    _abs_r(u, NO_FACTORS.reshape(0) if f is None else f, np.float32(1.0 / n_dof),
           np.float32(n_dof - 3.0), s2, r, NO_FACTORS.reshape(0) if clamped is None else clamped)
