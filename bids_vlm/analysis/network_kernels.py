"""The compiled loops of the network enrichment (numba; :mod:`bids_vlm.analysis.networks`
calls them): the BN counts per network, the spatial null's moved labels and exceedances, and
the hypergeometric tail."""
from __future__ import annotations

import math

import numpy as np

from bids_vlm.jit import njit

_BIG = 4096  # int() truncates: int(x + _BIG) - _BIG is floor(x) for x > -_BIG


def _compiled(function):
    """:func:`bids_vlm.jit.njit` with Python's error model (a division by zero raises), as
    these loops were written for."""
    return njit(function, error_model="python")


@_compiled
def _count_entries(an_index, voxel_index, r, codes, pat_ptr, pat_net, out):  # pragma: no cover
    for e in range(len(an_index)):
        if r[e] > 0:
            side = 0
        elif r[e] < 0:
            side = 1
        else:
            continue
        c = codes[voxel_index[e]]
        for j in range(pat_ptr[c], pat_ptr[c + 1]):
            out[side, an_index[e], pat_net[j]] += 1


@_compiled
def _mark(ans, indptr, vox, need):  # pragma: no cover - compiled
    for a in ans:
        for e in range(indptr[a], indptr[a + 1]):
            need[vox[e]] = True


@_compiled
def _labels(points, part, on_lattice, mats, volume, out, counts):  # pragma: no cover
    """out[t, v] = the code of row v's source under move t (0 outside the lookup volume):
    row v at ``points[v]`` moves by mats[t, part[v]] (3 x 4); counts[t, code] += 1 over the
    lattice rows."""
    nx, ny, nz = volume.shape
    for t in range(mats.shape[0]):
        row, cnt = out[t], counts[t]
        for v in range(points.shape[0]):
            m = mats[t, part[v]]
            i, j, k = points[v, 0], points[v, 1], points[v, 2]
            a = np.int64(m[0, 0] * i + m[0, 1] * j + m[0, 2] * k + (m[0, 3] + 0.5 + _BIG)) - _BIG
            b = np.int64(m[1, 0] * i + m[1, 1] * j + m[1, 2] * k + (m[1, 3] + 0.5 + _BIG)) - _BIG
            c = np.int64(m[2, 0] * i + m[2, 1] * j + m[2, 2] * k + (m[2, 3] + 0.5 + _BIG)) - _BIG
            code = 0
            if a >= 0 and a < nx and b >= 0 and b < ny and c >= 0 and c < nz:
                code = volume[a, b, c]
            row[v] = code
            if on_lattice[v]:
                cnt[code] += 1


@_compiled
def _exceed(ans, indptr, vox, row_of, lab, n_pat, net_ptr, net_pat, m0, mt, valid, kobs, active,
            b, seen, stop_at):  # pragma: no cover - compiled
    """For each AN of ``ans`` and each move t of the chunk (``lab`` (rows, T) pattern codes,
    voxel v on row row_of[v]): its BNs per pattern, summed into networks (network n: patterns
    net_pat[net_ptr[n]:net_ptr[n + 1]]); for each active pair and usable move: seen += 1, and
    b += 1 when the null density reaches the observed (count * m0 >= kobs * mt); a pair stops
    (active False) once b reaches ``stop_at``."""
    n_t, n_net = lab.shape[1], m0.shape[0]
    for ii in range(ans.shape[0]):
        a = ans[ii]
        cnt = np.zeros((n_t, n_pat), np.int64)
        for e in range(indptr[a], indptr[a + 1]):
            row = lab[row_of[vox[e]]]
            for t in range(n_t):
                cnt[t, row[t]] += 1
        for t in range(n_t):
            for n in range(n_net):
                if not active[a, n] or not valid[t, n]:
                    continue
                c = 0
                for s in range(net_ptr[n], net_ptr[n + 1]):
                    c += cnt[t, net_pat[s]]
                seen[a, n] += 1
                if c * m0[n] >= kobs[a, n] * mt[t, n]:
                    b[a, n] += 1
                    if b[a, n] >= stop_at:
                        active[a, n] = False


@_compiled
def _log_pmf(j, total, good, draws):  # pragma: no cover - compiled
    lg = math.lgamma
    return (lg(good + 1) - lg(j + 1) - lg(good - j + 1) + lg(total - good + 1)
            - lg(draws - j + 1) - lg(total - good - draws + j + 1)
            - lg(total + 1) + lg(draws + 1) + lg(total - draws + 1))


@_compiled
def _hypergeom_sf(k, total, good, draws, out):  # pragma: no cover - compiled
    for i in range(k.shape[0]):
        kk, nn, gg, dd = k[i], total[i], good[i], draws[i]
        lo, hi = max(0, dd - (nn - gg)), min(dd, gg)
        if kk <= lo:
            out[i] = 1.0
            continue
        if kk > hi:
            out[i] = 0.0
            continue
        mode = ((dd + 1) * (gg + 1)) // (nn + 2)
        if kk > mode:  # upper tail: terms fall from j = kk on
            term = math.exp(_log_pmf(kk, nn, gg, dd))
            total_ = term
            j = kk
            while j < hi and term > total_ * 1e-17:
                term *= (gg - j) * (dd - j) / ((j + 1.0) * (nn - gg - dd + j + 1.0))
                total_ += term
                j += 1
            out[i] = min(total_, 1.0)
        else:  # 1 - lower tail: terms fall from j = kk - 1 down
            j = kk - 1
            term = math.exp(_log_pmf(j, nn, gg, dd))
            total_ = term
            while j > lo and term > total_ * 1e-17:
                term *= j * (nn - gg - dd + j) / ((gg - j + 1.0) * (dd - j + 1.0))
                total_ += term
                j -= 1
            out[i] = max(1.0 - total_, 0.0)
