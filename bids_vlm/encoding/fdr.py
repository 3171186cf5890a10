"""Benjamini-Hochberg FDR over voxels for each AN, on |z| without sorting; selective inference.

p is decreasing in |z|, so BH's step-up rule ``p_(k) <= q k / V`` becomes
``|z|_(k) >= z_crit(k)`` with ``z_crit(k) = Phi^-1(1 - q k / (2 V))``, the same for all ANs.
The number of discoveries k* is the largest fixed point of ``f(k) = #{v : |z_v| >= z_crit(k)}``
(f is increasing; BH's k* satisfies f(k*) = k*, and any fixed point is <= k*). Iterating
``k <- f(k)`` from k = V decreases monotonically to k* in a few steps.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import special

_MAX_ITER = 64


def bh_z_thresholds(n_voxels: int, q: float) -> np.ndarray:
    """(n_voxels,) critical |z| for ranks k = 1..V of the BH step-up rule at level q."""
    alphas = q * np.arange(1, n_voxels + 1) / n_voxels
    return -special.ndtri(alphas / 2.0)


def p_from_z(z) -> np.ndarray:
    """Two-sided p of standard-normal z."""
    return 2.0 * special.ndtr(-np.abs(np.asarray(z, dtype=np.float64)))


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
    |z| (inf without discoveries). Sorts the candidates: for BH across all ANs and voxels."""
    order = vals.sort(descending=True).values
    ranks = np.arange(1, len(order) + 1)
    zcrit = torch.from_numpy((-special.ndtri(q * ranks / n_tests / 2.0)).astype(np.float32))
    passed = torch.nonzero(order.cpu() >= zcrit)
    if not len(passed):
        return torch.zeros_like(vals, dtype=torch.bool), float("inf")
    thr = float(zcrit[int(passed.max())])
    return vals >= thr, thr


def simes_and_selective(an, p, n_an: int, n_vox: int, q: float):
    """Two-stage selective inference (Benjamini & Bogomolov 2014, JRSS-B 76:297) from each AN's
    BH discoveries at level q.

    an, p (E,): the AN and two-sided p of every entry that BH per AN at level q discovered.
    Stage 1: a Simes p per AN across its V voxels, min_k V p_(k) / k (when it is <= q its
    minimum is reached among those discoveries; NaN otherwise, meaning > q); BH across the
    n_an ANs at level q selects R of them. Stage 2: BH within each selected AN at level
    q R / n_an, a subset of its level-q discoveries. Returns (E,) bool "kept", (n_an,) Simes p
    and (n_an,) the critical |z| of each AN's stage-2 BH (inf when not selected).
    """
    an, p = np.asarray(an, np.int64), np.asarray(p, np.float64)
    order = np.lexsort((p, an))
    a_s, p_s = an[order], p[order]
    starts = np.flatnonzero(np.r_[True, a_s[1:] != a_s[:-1]]) if len(a_s) else np.zeros(0, int)
    rank = np.arange(len(a_s)) - np.repeat(starts, np.diff(np.r_[starts, len(a_s)])) + 1
    simes = np.full(n_an, np.nan)
    if len(a_s):
        simes[a_s[starts]] = np.minimum.reduceat(n_vox * p_s / rank, starts)
    known = np.where(np.isfinite(simes), simes, np.inf)
    ranked = np.sort(known)
    passed = np.flatnonzero(ranked <= q * np.arange(1, n_an + 1) / n_an)
    n_sel = int(passed.max()) + 1 if len(passed) else 0
    level = q * n_sel / n_an
    selected = known <= level
    ok = selected[a_s] & (p_s <= level * rank / n_vox)
    k_keep = np.zeros(n_an, np.int64)
    if len(a_s):
        k_keep[a_s[starts]] = np.maximum.reduceat(np.where(ok, rank, 0), starts)
    keep = np.zeros(len(an), bool)
    keep[order] = rank <= k_keep[a_s]
    thr = np.where(k_keep > 0, -special.ndtri(np.maximum(level * k_keep / n_vox, 1e-300) / 2.0),
                   np.inf)
    return keep, simes, thr.astype(np.float32)
