"""Compiled kernels (numba): one way to compile them for every stage."""
from __future__ import annotations

import numba


def njit(function, fastmath=False, **extra):
    """numba.njit releasing the GIL (the callers' worker threads run kernels at once), NumPy's
    error model, cached on disk when a cache folder is writable (compiled anew otherwise).
    fastmath False: IEEE semantics, operations in the written order."""
    options = dict(nogil=True, error_model="numpy", fastmath=fastmath, **extra)
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # no writable cache location (read-only install and home)
        return numba.njit(**options)(function)
