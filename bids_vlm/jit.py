"""Compiled kernels (numba): one way to compile them for every stage."""
from __future__ import annotations

import numba

# fast-math without 'nnan' / 'ninf' (the association's u is inf at |r| = 1): sums may be
# reassociated (vectorised reductions), multiply-adds fused
FAST = frozenset({"nsz", "arcp", "contract", "reassoc", "afn"})


def njit(function, fastmath=False, error_model="numpy", **extra):
    """numba.njit releasing the GIL (the callers' worker threads run kernels at once), cached on
    disk when a cache folder is writable (compiled anew otherwise). fastmath False: IEEE
    semantics, operations in the written order; :data:`FAST` for vectorised sums. error_model
    "numpy": a division by zero gives inf or NaN; "python" raises."""
    options = dict(nogil=True, error_model=error_model, fastmath=fastmath, **extra)
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # no writable cache location (read-only install and home)
        return numba.njit(**options)(function)


def fast(function, **extra):
    """:func:`njit` with :data:`FAST` math."""
    return njit(function, fastmath=set(FAST), **extra)
