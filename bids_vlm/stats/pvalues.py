"""Two-sided p of standard-normal z, compiled, and the Simes p of a row of z.

An entry's p is a function of its float32 z: :func:`p_values` evaluates it with scipy's
algorithm (Cephes' ndtr), compiled, giving the values :func:`p_from_z` gives. The association
does not store p: it is evaluated where it is needed, and :func:`simes_z` finds the Simes p
of an AN's discoveries from their z, evaluating p only in the bins of |z| that can hold the
minimum.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from bids_vlm.stats.kernels import _jit_exact


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


@_jit_exact
def _edge_p(key):  # pragma: no cover - compiled
    # p at the |z| whose float32 bits are key (int64 >= 0; past +inf: p = 0)
    bits = np.zeros(1, np.int32)
    bits[0] = np.int32(min(key, np.int64(0x7F800000)))
    return _p_value(np.float64(bits.view(np.float32)[0]))


SIMES_BINS = 64  # bins of |z| of the Simes p from z: few p evaluated at their edges


@_jit_exact
def simes_z(z, n_vox, hist, buf):  # pragma: no cover - compiled
    """min_k V p_(k) / k, p = :func:`p_values` of z (m,) float32 (finite, m >= 1), with p
    evaluated only where the minimum can be. The bits of |z| are binned (len(hist) int64
    bins, :data:`SIMES_BINS`); bin j holds ranks above + 1 .. above + hist[j] and p between
    those of its edges (p falls as |z| grows): its last rank with its lower edge's p bounds
    the minimum from above, its first rank with its upper edge's p from below. The entries of
    the bins whose lower bound reaches the upper bound are gathered (into buf (>= m,)
    float32), sorted and their p evaluated, with their ranks among all. The same value as
    the sorted p would give (the same operations), in three passes over z."""
    n_bins, keys = hist.shape[0], z.view(np.int32)
    lo, hi = np.int64(0x7FFFFFFF), np.int64(0)
    for e in range(keys.shape[0]):
        key = np.int64(keys[e] & 0x7FFFFFFF)
        lo, hi = min(lo, key), max(hi, key)
    shift = 0
    while (hi >> shift) - (lo >> shift) >= n_bins:
        shift += 1
    base, top = lo >> shift, (hi >> shift) - (lo >> shift)
    hist[:top + 1] = 0
    for e in range(keys.shape[0]):
        hist[((keys[e] & 0x7FFFFFFF) >> shift) - base] += 1
    bound, above = np.inf, 0  # a bin's last entry: p at most its lower edge's
    for j in range(top, -1, -1):
        if hist[j]:
            above += hist[j]
            bound = min(bound, n_vox * _edge_p((base + j) << shift) / above)
    bound *= 1.0 + 1e-9
    above, skipped = 0, 0  # hist[j] becomes: entries of skipped bins above bin j, or -1
    for j in range(top, -1, -1):
        count = hist[j]
        if count and n_vox * _edge_p((base + j + 1) << shift) / (above + count) * (
                1.0 - 1e-9) > bound:
            skipped += count
            hist[j] = -1  # no entry of this bin can reach the minimum
        elif count:
            hist[j] = skipped
        above += count
    m = 0
    for e in range(keys.shape[0]):
        if hist[((keys[e] & 0x7FFFFFFF) >> shift) - base] >= 0:
            buf[m] = abs(z[e])
            m += 1
    part = buf[:m]
    part.sort()
    part_keys, best = part.view(np.int32), np.inf  # |z| >= 0: its bits are its key
    for e in range(m):  # by decreasing |z|: rank e + 1 among these, plus the skipped above
        i = m - 1 - e
        rank = e + 1 + hist[(np.int64(part_keys[i]) >> shift) - base]
        best = min(best, n_vox * _p_value(np.float64(part[i])) / rank)
    return best
