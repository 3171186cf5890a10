"""Benjamini-Hochberg FDR over voxels for each AN, on |z| without sorting.

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
