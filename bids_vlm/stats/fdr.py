"""Benjamini-Hochberg FDR over voxels for each AN, on |z| without sorting; selective inference.

p is decreasing in |z|, so BH's step-up rule ``p_(k) <= q k / V`` becomes
``|z|_(k) >= z_crit(k)`` with ``z_crit(k) = Phi^-1(1 - q k / (2 V))``, the same for all ANs.
The number of discoveries k* is the largest k with ``f(k) = #{v : |z_v| >= z_crit(k)} >= k``,
also the largest fixed point of f (f is increasing). On the CPU it is found by counting the
values in bins and sorting only the bin that holds the boundary
(:func:`bids_vlm.stats.bhcount.bh_count`); on CUDA (:func:`bh_select`) by iterating
``k <- f(k)`` from k = V, which decreases monotonically to k* in a few steps. The Simes p and
the selective procedure's second stage work on bins of the bits of p (or, for the Simes p of
the compiled BH, of |z|: :func:`bids_vlm.stats.pvalues.simes_z` evaluates p only in the bins
that can hold the minimum) in the same way, row by row (entries grouped by AN), so that
nothing is sorted whole.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import special

from bids_vlm.stats.bhcount import (F32_SHIFT, F64_SHIFT, bh_count, bh_descend, bh_work,
                                    rank_bins)
from bids_vlm.stats.kernels import _jit, _jit_exact
from bids_vlm.stats.pvalues import SIMES_BINS, simes_z

_MAX_ITER = 64


def bh_z_thresholds(n_voxels: int, q: float) -> np.ndarray:
    """(n_voxels,) critical |z| for ranks k = 1..V of the BH step-up rule at level q."""
    alphas = q * np.arange(1, n_voxels + 1) / n_voxels
    return -special.ndtri(alphas / 2.0)


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
    q R / n_an, a subset of its level-q discoveries (all of them when R = n_an). Returns (E,)
    bool "kept", (n_an,) Simes p and (n_an,) the critical |z| of each AN's stage-2 BH (inf
    when not selected).
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
    rows_out, cols_out, r_out, z_out = out
    bits = z.view(np.int32)
    hist, simes_hist = np.empty(first.shape[0], np.int64), np.empty(SIMES_BINS, np.int64)
    simes_buf = buf.view(np.float32)  # free once a row's BH count is known
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
        if write > first_kept:
            p_an[i] = simes_z(z_out[first_kept:write], n_vox, simes_hist, simes_buf)
    return write - at


def select_rows(candidates, n, zcrit, layout, n_vox, per_an, out, at=0, work=None):
    """BH per AN among a block's candidates. candidates = (rows, cols (E,) int, u, |r|, |z|
    (E,) float32) grouped by row (:func:`bids_vlm.stats.readback.read_back`, with |r| and
    |z|), of which the first ``n``; every candidate of a row that is there. zcrit (V,) float32
    from :func:`bh_z_thresholds` over ``n_vox`` voxels, layout its
    :func:`bids_vlm.stats.bhcount.rank_bins`. Writes per row (b,) into per_an =
    (z_threshold (critical |z|, inf without discoveries), n_pos, n_neg (discoveries with r > 0
    and r < 0; added), p_an (the Simes p of the discoveries; left as it is without)); writes
    the discoveries into out = (rows, cols, r, z (signed as u)) from ``at`` on, and returns
    how many (their p are :func:`~bids_vlm.stats.pvalues.p_values` of z; the Simes p evaluates
    only those it needs, :func:`~bids_vlm.stats.pvalues.simes_z`). work:
    :func:`bids_vlm.stats.bhcount.bh_work` of at least V (allocated when None)."""
    rows, cols, u, r, z = candidates
    thr = zcrit.view(np.int32)  # the bits, in place (no copy at every call)
    return _select(rows, cols, u, r, z, n, thr, *layout, zcrit, float(n_vox), *per_an, out, at,
                   *(work or bh_work(len(zcrit))))
