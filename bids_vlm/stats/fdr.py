"""Benjamini-Hochberg FDR over voxels for each AN, on |z| without sorting; selective inference.

p is decreasing in |z|, so BH's step-up rule ``p_(k) <= q k / V`` becomes
``|z|_(k) >= z_crit(k)`` with ``z_crit(k) = Phi^-1(1 - q k / (2 V))``, the same for all ANs.
The number of discoveries k* is the largest k with ``f(k) = #{v : |z_v| >= z_crit(k)} >= k``,
also the largest fixed point of f (f is increasing). On the CPU it is found by counting the
values in bins and sorting only the bin that holds the boundary
(:func:`bids_vlm.stats.kernels.bh_count`); on CUDA (:func:`bh_select`) by iterating
``k <- f(k)`` from k = V, which decreases monotonically to k* in a few steps. The Simes p and
the selective procedure's second stage work on bins of the bits of p in the same way, row by
row (entries grouped by AN), so that nothing is sorted whole.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import special

from bids_vlm.stats.kernels import (F32_SHIFT, F64_SHIFT, _jit, _jit_exact, bh_count,
                                       bh_descend, bh_work, rank_bins)

_MAX_ITER = 64


def bh_z_thresholds(n_voxels: int, q: float) -> np.ndarray:
    """(n_voxels,) critical |z| for ranks k = 1..V of the BH step-up rule at level q."""
    alphas = q * np.arange(1, n_voxels + 1) / n_voxels
    return -special.ndtri(alphas / 2.0)


def p_from_z(z) -> np.ndarray:
    """Two-sided p of standard-normal z."""
    return 2.0 * special.ndtr(-np.abs(np.asarray(z, dtype=np.float64)))


# scipy.special.ndtr's algorithm (Cephes ndtr, erf and erfc): compiled, it gives the same p
_C_P, _C_Q, _C_R, _C_S, _C_T, _C_U = (np.array(c) for c in (
    [2.46196981473530512524E-10, 5.64189564831068821977E-1, 7.46321056442269912687E0,
     4.86371970985681366614E1, 1.96520832956077098242E2, 5.26445194995477358631E2,
     9.34528527171957607540E2, 1.02755188689515710272E3, 5.57535335369399327526E2],
    [1.32281951154744992508E1, 8.67072140885989742329E1, 3.54937778887819891062E2,
     9.75708501743205489753E2, 1.82390916687909736289E3, 2.24633760818710981792E3,
     1.65666309194161350182E3, 5.57535340817727675546E2],
    [5.64189583547755073984E-1, 1.27536670759978104416E0, 5.01905042251180477414E0,
     6.16021097993053585195E0, 7.40974269950448939160E0, 2.97886665372100240670E0],
    [2.26052863220117276590E0, 9.39603524938001434673E0, 1.20489539808096656605E1,
     1.70814450747565897222E1, 9.60896809063285878198E0, 3.36907645100081516050E0],
    [9.60497373987051638749E0, 9.00260197203842689217E1, 2.23200534594684319226E3,
     7.00332514112805075473E3, 5.55923013010394962768E4],
    [3.35617141647503099647E1, 5.21357949780152679795E2, 4.59432382970980127987E3,
     2.26290000613890934246E4, 4.92673942608635921086E4]))


def _p_value(z_abs):  # pragma: no cover - compiled
    # Cephes' polynomials (Horner, written out so that they compile inline), every branch
    # evaluated and one selected: faster than branching, and each the same operations
    z = abs(-z_abs * 0.70710678118654752440)
    zz = z * z
    p_n, q_n, p_r, q_r, p_t, q_t = _C_P[0], z + _C_Q[0], _C_R[0], z + _C_S[0], _C_T[0], \
        zz + _C_U[0]
    for i in range(1, 9):
        p_n = p_n * z + _C_P[i]
    for i in range(1, 8):
        q_n = q_n * z + _C_Q[i]
    for i in range(1, 6):
        p_r, q_r = p_r * z + _C_R[i], q_r * z + _C_S[i]
    for i in range(1, 5):
        p_t, q_t = p_t * zz + _C_T[i], q_t * zz + _C_U[i]
    ex = np.exp(-zz)
    small = 0.5 + 0.5 * -(z * p_t / q_t)  # 0.5 + 0.5 erf(-z)
    mid = 0.5 * ((ex * p_n) / q_n)  # 0.5 erfc(z), z < 8
    big = 0.5 * ((ex * p_r) / q_r)
    y = small if z < 1.0 else (mid if z < 8.0 else big)
    return 0.0 if z >= 1.0 and -zz < -7.09782712893383996843E2 else 2.0 * y  # underflow


_p_value = _jit_exact(_p_value, inline="always")  # inlined where it is called


@_jit_exact
def _p_values(z, out):  # pragma: no cover - compiled
    for e in range(z.shape[0]):
        out[e] = _p_value(np.float64(abs(z[e])))


def p_values(z) -> np.ndarray:
    """:func:`p_from_z` compiled: (E,) float64 two-sided p of z (E,) float32 (the same values,
    without scipy's passes over temporaries)."""
    out = np.empty(len(z), np.float64)
    _p_values(np.ascontiguousarray(z, np.float32), out)
    return out


def bh_select(rows, vals, n_rows: int, zcrit: torch.Tensor):
    """Benjamini-Hochberg discoveries among candidates.

    rows (E,): the row (AN) of each candidate; vals (E,): its |z|. Candidates must include every
    entry with |z| >= zcrit[-1], or at least every entry with |z| >= zcrit[n - 1] where n bounds
    the row's count of |z| >= zcrit[-1] (no discovery is below that); zcrit (V,) from
    :func:`bh_z_thresholds`. Returns (E,) bool "is a discovery" and (n_rows,) thresholds
    (critical |z| of each row, inf without discoveries). An exact sort of a row's candidates is
    the fallback when the iteration has not converged.
    """
    inf = torch.full((1,), float("inf"), device=vals.device)
    k = torch.bincount(rows[vals >= zcrit[-1]], minlength=n_rows)
    for _ in range(_MAX_ITER):
        thr = torch.where(k > 0, zcrit[(k - 1).clamp(min=0)], inf)
        keep = vals >= thr[rows]
        new = torch.bincount(rows[keep], minlength=n_rows)
        if torch.equal(new, k):
            return keep, thr
        k = new
    for row in range(n_rows):  # pragma: no cover (rare): exact BH on the row's candidates
        mine = vals[rows == row].sort(descending=True).values
        ranked = mine >= zcrit[:len(mine)]
        k[row] = int(ranked.nonzero().max()) + 1 if ranked.any() else 0
    thr = torch.where(k > 0, zcrit[(k - 1).clamp(min=0)], inf)
    return vals >= thr[rows], thr


def bh_sorted(vals, n_tests: int, q: float):
    """Benjamini-Hochberg over ``n_tests`` tests given the |z| (E,) of candidates that include
    every test whose |z| can reach the critical value (all tests with |z| >= z_crit(k0) for a
    k0 at least the number of discoveries). Returns (E,) bool "is a discovery" and the critical
    |z| (inf without discoveries). For BH across all ANs and voxels (the candidates counted
    in bins, :func:`bh_count_values`, not sorted)."""
    ranks = np.arange(1, len(vals) + 1)
    zcrit = (-special.ndtri(q * ranks / n_tests / 2.0)).astype(np.float32)
    k = bh_count_values(vals.cpu().numpy().astype(np.float32), zcrit) if len(vals) else 0
    if not k:
        return torch.zeros_like(vals, dtype=torch.bool), float("inf")
    thr = float(zcrit[k - 1])
    return vals >= thr, thr


def bh_count_values(vals, zcrit) -> int:
    """BH's number of discoveries among |z| values vals (E,) >= 0 for the critical values zcrit
    (M,) float32 non-increasing (rank k passes for |z| >= zcrit[k - 1]): the largest k with
    #{vals >= zcrit[k - 1]} >= k, 0 if none; as a sort of vals would give it, without one."""
    keys = np.asarray(vals, np.float32).view(np.int32).astype(np.int64)
    thr = np.asarray(zcrit, np.float32).view(np.int32).astype(np.int64)
    first, count, shift, base = rank_bins(thr, F32_SHIFT)
    return int(bh_count(keys, thr, first, count, shift, base, np.empty(len(first), np.int64),
                        np.empty(max(len(keys), 1), np.int64)))


def simes_and_selective(an, p, n_an: int, n_vox: int, q: float):
    """Two-stage selective inference (Benjamini & Bogomolov 2014, JRSS-B 76:297) from each AN's
    BH discoveries at level q.

    an, p (E,): the AN and two-sided p of every entry that BH per AN at level q discovered.
    Stage 1: a Simes p per AN across its V voxels, min_k V p_(k) / k (when it is <= q its
    minimum is reached among those discoveries; NaN otherwise, meaning > q); BH across the
    n_an ANs at level q selects R of them. Stage 2: BH within each selected AN at level
    q R / n_an, a subset of its level-q discoveries (all of them when R = n_an). Returns (E,) bool "kept", (n_an,) Simes p
    and (n_an,) the critical |z| of each AN's stage-2 BH (inf when not selected).
    """
    an, p = np.asarray(an, np.int64), np.asarray(p, np.float64)
    order = None if np.all(an[1:] >= an[:-1]) else np.argsort(an, kind="stable")
    a_s, p_s = (an, p) if order is None else (an[order], p[order])
    counts = np.bincount(a_s, minlength=n_an)
    simes = simes_rows(p_s, counts, n_vox)
    level, selected = select_ans(simes, q)
    # every AN selected: stage 2 is BH at level q, whose discoveries are stage 1's (not derived
    # again from p, which can differ from the z stage 1 compared at float32 rounding)
    if selected.all():
        k_keep, kept = counts, np.ones(len(p_s), bool)
    else:
        k_keep = stage_two_rows(p_s, counts, selected, level, n_vox)
        kept = p_s <= keep_limits(k_keep, level, n_vox)[a_s]
    keep = kept if order is None else np.empty_like(kept)
    if order is not None:
        keep[order] = kept
    return keep, simes, stage_two_thresholds(k_keep, level, n_vox)


def select_ans(simes, q: float):
    """Stage 1 of :func:`simes_and_selective`: BH across the ANs' Simes p (N,) (NaN: > q).
    Returns the second stage's level q R / N and (N,) bool "selected"."""
    n_an = len(simes)
    known = np.where(np.isfinite(simes), simes, np.inf)
    ranked = np.sort(known)
    passed = np.flatnonzero(ranked <= q * np.arange(1, n_an + 1) / n_an)
    n_sel = int(passed.max()) + 1 if len(passed) else 0
    level = q * n_sel / n_an
    return level, known <= level


def keep_limits(k_keep, level: float, n_vox: int) -> np.ndarray:
    """(N,) the largest p each AN keeps in stage 2 (-1 for none): its k_keep-th smallest p is
    <= level k_keep / V and no later one is, so ``rank <= k_keep`` is ``p <= level k / V``."""
    return np.where(k_keep > 0, level * k_keep / n_vox, -1.0)


def stage_two_thresholds(k_keep, level: float, n_vox: int) -> np.ndarray:
    """(N,) float32 critical |z| of each AN's stage-2 BH (inf when it keeps nothing)."""
    thr = np.where(k_keep > 0, -special.ndtri(np.maximum(level * k_keep / n_vox, 1e-300) / 2.0),
                   np.inf)
    return thr.astype(np.float32)


def simes_rows(p, counts, n_vox: int) -> np.ndarray:
    """(b,) Simes p min_k V p_(k) / k of each row's p (E,) float64, rows of ``counts`` (b,)
    consecutive entries in any order (NaN for a row without entries). Computed on bins of the
    bits of p: only the bins that can hold the minimum are sorted."""
    out = np.full(len(counts), np.nan)
    _simes(np.ascontiguousarray(p, np.float64), np.asarray(counts, np.int64), float(n_vox), out)
    return out


def stage_two_rows(p, counts, selected, level: float, n_vox: int) -> np.ndarray:
    """(b,) int64 BH's number of discoveries at ``level`` of each selected row's p (E,) (rows
    as for :func:`simes_rows`): the largest k with p_(k) <= level k / V; 0 elsewhere."""
    out = np.zeros(len(counts), np.int64)
    counts = np.asarray(counts, np.int64)
    if level <= 0 or not len(p) or not np.any(selected):
        return out
    ranks = np.arange(1, int(counts.max()) + 1)
    limits = level * ranks / n_vox  # as BH compares them: p_(k) <= level k / V
    thr = -limits.view(np.int64)  # more significant: larger key
    first, count, shift, base = rank_bins(thr, F64_SHIFT)
    _stage_two(np.ascontiguousarray(p, np.float64), counts, np.asarray(selected, np.bool_), thr,
               first, count, shift, base, out)
    return out


@_jit
def _stage_two(p, counts, selected, thr, first, count, shift, base,
               out):  # pragma: no cover - compiled
    keys = -p.view(np.int64)
    hist, buf = np.empty(first.shape[0], np.int64), np.empty(max(counts.max(), 1), np.int64)
    start = 0
    for i in range(counts.shape[0]):
        if selected[i] and counts[i]:
            row = keys[start:start + counts[i]]
            k = bh_descend(row, np.int64(-1), thr, counts[i])  # from the row's entries
            if k < 0:  # the descent did not settle: BH's count from bins
                k = bh_count(row, thr, first, count, shift, base, hist, buf)
            out[i] = k
        start += counts[i]


@_jit_exact
def _simes_row(p, n_vox, hist, buf):  # pragma: no cover - compiled
    # min_k V p_(k) / k over p (m,) >= 0: bins of the bits of p (at most len(hist)); a bin is
    # sorted only when its lower bound reaches the upper bound of the minimum
    n_bins, keys = hist.shape[0], p.view(np.int64)
    edge = np.zeros(1, np.int64)
    edge_value = edge.view(np.float64)
    lo, hi = keys.min(), keys.max()
    shift = 0
    while (hi >> shift) - (lo >> shift) >= n_bins:
        shift += 1
    base = lo >> shift
    hist[:] = 0
    for e in range(keys.shape[0]):
        hist[(keys[e] >> shift) - base] += 1
    bound, above = np.inf, 0  # the last entry of each bin: p below the bin's top
    for j in range(n_bins):
        if hist[j]:
            above += hist[j]
            edge[0] = (base + j + 1) << shift
            bound = min(bound, n_vox * edge_value[0] / above)
    bound *= 1.0 + 1e-9
    best, above = np.inf, 0
    for j in range(n_bins):
        if not hist[j]:
            continue
        edge[0] = (base + j) << shift  # p >= this in bin j, rank <= above + hist[j]
        if n_vox * edge_value[0] / (above + hist[j]) * (1.0 - 1e-9) <= bound:
            m = 0
            for e in range(keys.shape[0]):
                if (keys[e] >> shift) - base == j:
                    buf[m] = p[e]
                    m += 1
            part = buf[:m]
            part.sort()
            for e in range(m):
                best = min(best, n_vox * part[e] / (above + e + 1))
        above += hist[j]
    return best


@_jit_exact
def _simes(p, counts, n_vox, out):  # pragma: no cover - compiled
    hist, buf = np.empty(1024, np.int64), np.empty(max(counts.max(), 1), np.float64)
    start = 0
    for i in range(counts.shape[0]):
        if counts[i]:
            out[i] = _simes_row(p[start:start + counts[i]], n_vox, hist, buf)
        start += counts[i]


@_jit_exact
def _select(rows, cols, u, r, z, n, thr, first, count, shift, base, zcrit, n_vox, z_threshold,
            n_pos, n_neg, p_an, out, at, keys, buf):  # pragma: no cover - compiled
    rows_out, cols_out, r_out, z_out, p_out = out
    bits = z.view(np.int32)
    hist, simes_hist = np.empty(first.shape[0], np.int64), np.empty(1024, np.int64)
    simes_buf = buf.view(np.float64)  # free once a row's BH count is known
    read, write = 0, at
    while read < n:
        i, start, first_kept = rows[read], read, write
        while read < n and rows[read] == i:
            read += 1
        k = bh_descend(bits[start:read], np.int32(-1), thr, read - start)
        if k < 0:  # the descent did not settle: BH's count from bins
            for e in range(start, read):
                keys[e - start] = bits[e]
            k = bh_count(keys[:read - start], thr, first, count, shift, base, hist, buf)
        z_threshold[i] = zcrit[k - 1] if k > 0 else np.inf
        negatives, level = 0, zcrit[k - 1] if k > 0 else np.float32(np.inf)
        for e in range(start, read):
            if z[e] >= level:
                rows_out[write], cols_out[write] = i, cols[e]
                r_out[write] = np.copysign(r[e], u[e])  # |r|, |z| with the sign of r
                z_out[write] = np.copysign(z[e], u[e])
                negatives += np.int64(u[e] < 0)
                write += 1
        n_neg[i] += negatives
        n_pos[i] += write - first_kept - negatives
        for e in range(first_kept, write):  # a loop of its own: 4 x faster than in the one above
            p_out[e] = _p_value(np.float64(abs(z_out[e])))
        if write > first_kept:
            p_an[i] = _simes_row(p_out[first_kept:write], n_vox, simes_hist, simes_buf)
    return write - at


def select_rows(candidates, n, zcrit, layout, n_vox, per_an, out, at=0, work=None):
    """BH per AN among a block's candidates. candidates = (rows, cols (E,) int, u, |r|, |z|
    (E,) float32) grouped by row (:func:`bids_vlm.stats.kernels.read_back`, with |r| and
    |z|), of which the first ``n``; every candidate of a row that is there. zcrit (V,) float32
    from :func:`bh_z_thresholds` over ``n_vox`` voxels, layout its
    :func:`bids_vlm.stats.kernels.rank_bins`. Writes per row (b,) into per_an =
    (z_threshold (critical |z|, inf without discoveries), n_pos, n_neg (discoveries with r > 0
    and r < 0; added), p_an (the Simes p of the discoveries; left as it is without)); writes
    the discoveries into out = (rows, cols, r, z (signed as u), p (two-sided, as
    :func:`p_from_z`) float64) from ``at`` on, and returns how many. work:
    :func:`bids_vlm.stats.kernels.bh_work` of at least V (allocated when None)."""
    rows, cols, u, r, z = candidates
    thr = zcrit.view(np.int32)  # the bits, in place (no copy at every call)
    return _select(rows, cols, u, r, z, n, thr, *layout, zcrit, float(n_vox), *per_an, out, at,
                   *(work or bh_work(len(zcrit))))


@_jit_exact
def _fill(rows, cols, r, z, p, limit, start, out, offset, vox_count, n_pos,
          n_neg):  # pragma: no cover - compiled
    an_out, vox_out, r_out, z_out, p_out = out
    n, e = offset, 0
    while e < rows.shape[0]:  # row by row (entries grouped by row)
        i, positives, negatives = rows[e], 0, 0
        while e < rows.shape[0] and rows[e] == i:
            if p[e] <= limit[i]:
                an_out[n], vox_out[n], p_out[n] = i + start, cols[e], p[e]
                r_out[n], z_out[n] = r[e], z[e]
                vox_count[cols[e]] += 1
                positives += 1 if r[e] > 0 else 0  # branch-free
                negatives += 1 if r[e] < 0 else 0
                n += 1
            e += 1
        n_pos[i] += positives
        n_neg[i] += negatives
    return n - offset


def kept_entries(blocks, counts, p_an, n_vox: int, q: float, selective: bool, imap=map):
    """The entries of BH per AN (``selective`` false) or of the selective procedure (as
    :func:`simes_and_selective`), copied from the blocks into one set of arrays, in parallel.

    blocks: per block of ANs (slice of the ANs, (rows (E_b,) within the block, voxels, r, z,
    p) grouped by AN); counts (N,) entries per AN; p_an (N,) their Simes p; imap: a map over
    the blocks (worker threads). Returns the fields an_index, voxel_index, r, z, p (E,) and
    bn_count (V,), and per AN the n_pos, n_neg, z_threshold the scope changes (none for BH
    per AN).
    """
    k_keep, limit, per_an = counts, np.full(len(counts), np.inf), {}
    if selective:
        level, selected = select_ans(p_an, q)
        k_keep = np.concatenate(list(imap(lambda block: stage_two_rows(
            block[1][4], counts[block[0]], selected[block[0]], level, n_vox), blocks))
            or [np.zeros(0, np.int64)])
        limit = keep_limits(k_keep, level, n_vox)
        per_an["z_threshold"] = stage_two_thresholds(k_keep, level, n_vox)
    offsets = np.cumsum([0] + [int(k_keep[sl].sum()) for sl, _ in blocks])
    out = tuple(np.empty(offsets[-1], dtype) for dtype in
                (np.int64, np.int64, np.float32, np.float32, np.float64))
    n_pos, n_neg = np.zeros_like(counts), np.zeros_like(counts)

    def fill(i):
        (sl, entries), vox_count = blocks[i], np.zeros(n_vox, np.int64)
        _fill(*entries, limit[sl], sl.start, out, offsets[i], vox_count, n_pos[sl], n_neg[sl])
        return vox_count

    bn_count = sum(imap(fill, range(len(blocks))), np.zeros(n_vox, np.int64))
    if selective:
        per_an.update(n_pos=n_pos, n_neg=n_neg)
    fields = dict(zip(("an_index", "voxel_index", "r", "z", "p"), out), bn_count=bn_count)
    return fields, per_an
