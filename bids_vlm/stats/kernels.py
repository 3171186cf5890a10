"""Compiled CPU kernels of the association (numba): a tile's statistics, rows prepared, BH.

:func:`tile_stats`: the per-tile statistics of :mod:`bids_vlm.stats.blockscan` in one pass.
After a tile's matrix products (r and, with the Bartlett correction, the factors f), torch would
need about 17 elementwise passes over the tile for |r|, the peaks, the screening statistic u, its
chunk maxima and the screening counts; here one compiled loop reads r and f once, keeps every
intermediate in registers and writes u. It releases the GIL, so the association's worker threads
run it at once. The same statistics on CUDA come from torch operations
(:meth:`bids_vlm.stats.blockscan.BlockScanner._torch_stats`); a test checks that both agree.

:func:`prepare_rows`: columns of frames -> centred unit-norm rows and their autocorrelations
within runs, in one pass per column chunk (on CUDA: torch and the FFT of
:func:`bids_vlm.stats.autocorr.row_autocorrelations`).

:func:`bh_count`: Benjamini-Hochberg's number of discoveries without sorting: the values are
counted in bins of their bits (64 to 256 per octave), the bin that holds the boundary is found
from the counts, and only that bin's values are sorted. :func:`read_back` reads a block's
candidates back row by row, in one pass over the chunks of u, for BH per AN
(:func:`bids_vlm.stats.fdr.select_rows`); :func:`factors` and :func:`abs_r` give their
exact z (the float32 operations of the torch code they replace, up to the order of a sum).
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


F32_SHIFT = 15  # float32 bits >> 15: 256 bins per octave
F64_SHIFT = 46  # float64 bits >> 46: 64 bins per octave


@_jit
def _bin(key, shift, base, n_bins):  # pragma: no cover - compiled
    j = (key >> shift) - base
    return 0 if j < 0 else (n_bins - 1 if j >= n_bins else j)


@_jit
def _rank_bins(thr, shift, base, n_bins):  # pragma: no cover - compiled
    first, count = np.zeros(n_bins, np.int64), np.zeros(n_bins, np.int64)
    for k in range(len(thr), 0, -1):
        j = _bin(thr[k - 1], shift, base, n_bins)
        first[j] = k
        count[j] += 1
    return first, count


def rank_bins(thr, shift):
    """Bins of BH's critical values: thr (M,) int64 keys, non-increasing in the rank (rank k
    passes for a key >= thr[k - 1]); keys are binned as ``(key >> shift) - base``. Returns the
    layout (first (n_bins,), count (n_bins,): the ranks whose critical value falls in each bin
    are first .. first + count - 1; shift; base) that :func:`bh_count` takes."""
    thr = np.ascontiguousarray(thr, np.int64)
    base = int(thr[-1]) >> shift
    n_bins = (int(thr[0]) >> shift) - base + 1
    return (*_rank_bins(thr, shift, base, n_bins), shift, base)


@_jit
def bh_count(keys, thr, first, count, shift, base, hist, buf):  # pragma: no cover - compiled
    """The largest k with #{keys >= thr[k - 1]} >= k (0 if none): BH's number of discoveries.
    keys (n,) int64 (larger: more significant, e.g. the bits of |z|); thr (M,) and the layout
    from :func:`rank_bins`; hist (n_bins,) and buf (>= n,) int64 scratch. Bins are scanned
    from the least significant; only a bin that may hold the boundary is sorted."""
    n_bins, low = hist.shape[0], thr[len(thr) - 1]
    hist[:] = 0
    above = 0  # keys in bins >= j (keys below every critical value never count)
    for e in range(keys.shape[0]):
        if keys[e] >= low:
            hist[_bin(keys[e], shift, base, n_bins)] += 1
            above += 1
    for j in range(n_bins):
        if count[j] > 0 and above >= first[j]:
            hi = min(first[j] + count[j] - 1, above)
            rest = above - hist[j]  # keys in higher bins pass every rank of bin j
            if rest >= hi:
                return hi
            m = 0
            for e in range(keys.shape[0]):
                if keys[e] >= low and _bin(keys[e], shift, base, n_bins) == j:
                    buf[m] = keys[e]
                    m += 1
            part = buf[:m]
            part.sort()
            below = 0  # keys of the bin under thr[k - 1]
            for k in range(hi, first[j] - 1, -1):
                while below < m and part[below] < thr[k - 1]:
                    below += 1
                if rest + m - below >= k:
                    return k
        above -= hist[j]
    return 0


_NONE = np.int32(0x7F800001)  # above the bits of every non-negative float32 but NaN
DESCENT_STEPS = 8


@_jit
def bh_descend(bits, mask, thr, k):  # pragma: no cover - compiled
    """BH's count by descent from a bound: k <- #{bits & mask >= thr[k - 1]} while it falls.
    bits (n,) integer keys (e.g. float32 bits; ``mask``, of their type, clears a sign bit),
    thr (M,) of the same type, non-increasing
    (rank k passes for a key >= thr[k - 1]); k >= BH's count (e.g. n). As #{key >= thr[k - 1]}
    only grows with k, every step stays >= BH's count and stops exactly on it: the k it
    returns is that of :func:`bh_count`. Each step is one vectorised count; -1 when
    :data:`DESCENT_STEPS` steps did not settle (the caller then counts in bins)."""
    for _ in range(DESCENT_STEPS):
        if k == 0:
            return 0
        level, c = thr[k - 1], 0
        for e in range(bits.shape[0]):
            c += 1 if (bits[e] & mask) >= level else 0
        if c >= k:
            return k
        k = c
    return -1


def bh_work(n: int) -> tuple:
    """Scratch of the row-wise BH counts of :func:`read_back` and
    :func:`bids_vlm.stats.fdr.select_rows` for rows of up to n values: two (n,) int64 arrays
    (a caller that runs them many times keeps one, so that no call allocates them anew)."""
    return np.empty(max(n, 1), np.int64), np.empty(max(n, 1), np.int64)


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
