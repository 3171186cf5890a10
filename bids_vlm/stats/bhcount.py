"""Benjamini-Hochberg's number of discoveries without sorting (numba).

:func:`bh_count`: the values are counted in bins of their bits (64 to 256 per octave), the bin
that holds the boundary is found from the counts, and only that bin's values are sorted.
:func:`bh_descend`: the same count by descent from a bound, one vectorised count per step (it
gives way to the bins when it has not settled in :data:`DESCENT_STEPS` steps). Their callers:
:mod:`bids_vlm.stats.fdr` (BH across all pairs, per AN and the selective procedure's stages)
and :func:`bids_vlm.stats.readback.read_back` (a block's candidates per AN).
"""
from __future__ import annotations

import numpy as np

from bids_vlm.stats.kernels import _jit

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
