"""Networks (docs/METHOD.md 8): which functional networks each AN's BNs fall in, and which it
drives.

Networks are (possibly overlapping) sets of voxels of the atlases of
:mod:`bids_vlm.analysis.atlases` (by default the 7 Yeo networks plus the language network),
resampled to the BOLD grid (nearest neighbour). For every AN and network: its BN+ and BN- in
the network, the fraction of its BNs there, and two enrichment p-values (more of the AN's BNs in
the network than chance would put there):

* ``p_hypergeom``: hypergeometric, against a random draw of as many in-mask voxels. It assumes
  independent (exchangeable) voxels, which BN maps are not: they are spatially smooth, so under
  the complete null most ANs get tiny p-values. Kept as a column; not used for ``drives``.
* ``p``: a spatial null that keeps the BN map's spatial autocorrelation, by moving the ATLAS
  rather than the BN maps (:func:`spatial_enrichment`): random rigid moves of the atlas (a
  uniformly random 3-D rotation about the mask's centre of mass plus a translation uniform in a
  ball of radius SHIFT x the mask's RMS radius), the network labels resampled (nearest
  neighbour) onto the in-mask voxels for each move; a voxel whose source lies outside the brain
  mask or the atlas's coverage gets no network. The BN map and the atlas keep their own
  smoothness and shapes; only their relative position is random. Statistic: the AN's BN
  density in the network, (its BNs there) / (the network's size), the size counted on a
  lattice of the in-mask voxels (every ``s``-th voxel along each axis, ``s`` the smallest with at
  most LATTICE voxels), so that moves that push part of a network out of the brain do not favour
  the observed position; a move that keeps less than MIN_KEPT of a network is not used for it.
  p = (1 + #{null density >= observed}) / (1 + moves used).

On CIFTI grayordinates the atlases are matched to the data by structure and vertex / voxel
(:mod:`bids_vlm.analysis.atlases`) and the moves are a spin test on the fs_LR spheres
(:mod:`bids_vlm.analysis.spin`); the same kernels count the surrogates.

FDR: Benjamini-Hochberg across all ANs x networks of a layer (``groups``); an AN *drives* a
network when that q <= ``q`` (and it has a BN there). With ``n_surrogates`` 0, ``p`` is the
hypergeometric p.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from nilearn import image
from scipy import stats
import nibabel as nib

from bids_vlm.analysis.atlases import load_networks, space_problem, surface_network_masks
from bids_vlm.analysis.grids import SHIFT, VoxelGrid
from bids_vlm.analysis.network_kernels import (_count_entries, _exceed, _hypergeom_sf,
                                               _labels, _mark)
from bids_vlm.analysis.spin import SurfaceGrid

CHUNK = 64  # moves per pass over the BN entries (uint8 labels: one cache line per voxel)
STOP_AT = 20  # Besag-Clifford: a pair stops once this many null densities reached its own
MIN_KEPT = 0.5  # a move counts for a network when it keeps this share of the network
LATTICE = 30000  # network sizes are counted on at most about this many in-mask voxels
NULL_NOTE = ("spatial null: random rigid moves of the atlas (uniform 3-D rotation about the "
             "mask's centre of mass plus a translation uniform in a ball of radius "
             f"{SHIFT:g} x the mask's RMS radius), network labels resampled to the in-mask "
             "voxels (nearest neighbour; no network where the source lies outside the mask or "
             "the atlas); statistic: the AN's BN density in the network (moves keeping less "
             f"than {MIN_KEPT:g} of a network not used for it); p = (1 + null densities >= "
             "observed) / (1 + moves used)")


class NetworkMasks(dict):
    """{network: (V,) bool over the in-mask voxels}, with ``grid`` (:class:`VoxelGrid`, for the
    spatial null; None when unknown)."""

    grid = None


def network_masks(atlases, mask_img) -> NetworkMasks:
    """{network: (V,) bool over the in-mask voxels of ``mask_img``} (atlases resampled to its
    grid with nearest-neighbour interpolation), with ``.grid`` the in-mask voxels. On CIFTI
    grayordinates (a dscalar ``mask_img``) the atlases are matched by structure and vertex /
    voxel, and ``.grid`` is the :class:`~bids_vlm.analysis.spin.SurfaceGrid` of the spin null."""
    if isinstance(mask_img, nib.Cifti2Image):

        bm = mask_img.header.get_axis(1)
        out = NetworkMasks(surface_network_masks(atlases, bm))
        out.grid = SurfaceGrid.of(bm)
        return out
    inside = np.asarray(mask_img.dataobj) > 0
    out = NetworkMasks()
    for atlas in atlases:
        data = np.asarray(image.resample_to_img(atlas.img, mask_img, interpolation="nearest",
                                                force_resample=True,
                                                copy_header=True).dataobj)[inside]
        for name, values in atlas.networks.items():
            out[name] = np.isin(data, values)
    out.grid = VoxelGrid(np.argwhere(inside), np.asarray(mask_img.affine, float),
                         tuple(int(s) for s in inside.shape[:3]))
    return out


def bh(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of a 1-D array."""
    return stats.false_discovery_control(pvalues) if len(pvalues) else pvalues


def bh_groups(p: np.ndarray, groups=None) -> np.ndarray:
    """BH q-values of p (N, M), one family per group of rows (all M columns of its rows);
    groups: (N,) labels, None: one family."""
    out = np.ones(p.shape)
    if groups is None:
        groups = np.zeros(len(p), int)
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    for g in np.unique(codes):
        rows = codes == g
        out[rows] = bh(p[rows].reshape(-1)).reshape(p[rows].shape)
    return out


def enrichment(an_index, voxel_index, r, n_an: int, masks: dict, q: float = 0.05, *,
               groups=None, n_surrogates: int = 1000, max_surrogates: int = 10000,
               seed: int = 0, grid: VoxelGrid | None = None) -> dict:
    """Per network, for the significant entries (an_index, voxel_index, r) of n_an ANs:

    {network: {"n_pos", "n_neg" (N,) BN+ / BN- in the network, "frac" (N,) share of the AN's BNs
    in it, "p_hypergeom" (N,) hypergeometric P(>= that many) (assumes independent voxels), "p"
    (N,) the spatial-null p (:func:`spatial_enrichment`; the hypergeometric p when
    ``n_surrogates`` is 0), "n_null" (N,) moves behind that p, "q" (N,) BH across all ANs x
    networks of a group, "drives" (N,) bool (q <= ``q`` and a BN in the network)}}.

    groups: (N,) labels of the BH families (the layers); None: one family. grid: the in-mask
    voxels (default ``masks.grid``, set by :func:`network_masks`); needed when
    ``n_surrogates`` > 0.
    """
    an_index = np.asarray(an_index, np.int64)
    voxel_index = np.asarray(voxel_index, np.int64)
    r = np.asarray(r)
    if len(an_index) and np.any(an_index[1:] < an_index[:-1]):
        order = np.argsort(an_index, kind="stable")  # by AN (the association writes them so)
        an_index, voxel_index, r = an_index[order], voxel_index[order], r[order]
    names = list(masks)
    member = np.stack([np.asarray(masks[n], bool) for n in names], axis=1)  # (V, M)
    n_bn = np.bincount(an_index, minlength=n_an)
    patterns = _patterns(member)
    n_pos, n_neg = _network_counts(an_index, voxel_index, r, n_an, patterns)
    k = n_pos + n_neg
    p_hyper = hypergeom_sf(k, len(member), member.sum(0)[None, :], n_bn[:, None])
    if n_surrogates > 0:
        grid = grid if grid is not None else getattr(masks, "grid", None)
        if grid is None:
            raise ValueError("the spatial null needs the voxel grid of the masks (grid=, or "
                             "masks from network_masks); n_surrogates=0 for the "
                             "hypergeometric p only")
        p, n_null = spatial_enrichment(an_index, voxel_index, n_an, member, grid, k, q=q,
                                       groups=groups, n_surrogates=n_surrogates,
                                       max_surrogates=max_surrogates, seed=seed,
                                       patterns=patterns)
    else:
        p, n_null = p_hyper, np.zeros(k.shape, np.int64)
    qv = bh_groups(p, groups)
    frac = np.divide(k, n_bn[:, None], out=np.zeros(k.shape), where=n_bn[:, None] > 0)
    return {name: {"n_pos": n_pos[:, m], "n_neg": n_neg[:, m], "frac": frac[:, m],
                   "p_hypergeom": p_hyper[:, m], "p": p[:, m], "n_null": n_null[:, m],
                   "q": qv[:, m], "drives": (qv[:, m] <= q) & (k[:, m] > 0)}
            for m, name in enumerate(names)}


def _network_counts(an_index, voxel_index, r, n_an: int, patterns) -> tuple:
    """(n_pos, n_neg) (N, M) int64: each AN's entries with r > 0 and with r < 0 in each
    network, in one compiled pass over the entries through the networks' overlap patterns
    (:func:`_patterns`): no temporaries of the entries' size (10-20 M a layer at 2 mm)."""
    codes, net_ptr, net_pat, n_pat = patterns
    owner = np.repeat(np.arange(len(net_ptr) - 1), np.diff(net_ptr))  # network of each item
    order = np.argsort(net_pat, kind="stable")  # -> per pattern its networks (CSR)
    pat_ptr = np.concatenate([[0], np.cumsum(np.bincount(net_pat, minlength=n_pat))])
    out = np.zeros((2, n_an, len(net_ptr) - 1), np.int64)
    _count_entries(an_index, voxel_index, np.asarray(r), codes, pat_ptr.astype(np.int64),
                   owner[order].astype(np.int64), out)
    return out[0], out[1]


def hypergeom_sf(k, total, good, draws) -> np.ndarray:
    """P(X >= k), X hypergeometric (``draws`` from ``total`` of which ``good``); arrays
    broadcast. Exact: the tail's terms summed by their ratios from the pmf at k (upper tail
    above the mode, 1 - lower tail below it) until they no longer change the sum; scipy's
    vectorised sf takes about 0.3 ms per value at thousands of draws."""
    arrays = np.broadcast_arrays(*(np.asarray(a, np.int64) for a in (k, total, good, draws)))
    out = np.empty(arrays[0].shape)
    _hypergeom_sf(*(np.ascontiguousarray(a).reshape(-1) for a in arrays), out.reshape(-1))
    return out


# ---------------------------------------------------------------------------------------------
# the spatial null


def spatial_enrichment(an_index, voxel_index, n_an: int, member: np.ndarray, grid: VoxelGrid,
                       k: np.ndarray, *, q: float = 0.05, groups=None, n_surrogates: int = 1000,
                       max_surrogates: int = 10000, seed: int = 0,
                       workers: int | None = None, patterns=None) -> tuple:
    """(p (N, M), moves used (N, M)) of the spatial null (module docstring).

    member: (V, M) network membership of the in-mask voxels (grid order); k: (N, M) the ANs'
    BNs in each network. A pair (AN, network) with no BN there gets p 1. Two economies, both
    keeping p valid: a pair stops once STOP_AT null densities reached its own (p = STOP_AT /
    moves used; Besag & Clifford 1991, Biometrika 78:301); pairs that no null density reached
    (p at the floor 1 / (1 + moves)) and that BH (per group) does not reject at ``q`` now but
    would at the floor 1 / (1 + ``max_surrogates``) get 9x as many moves again, repeatedly, up
    to ``max_surrogates`` in all (valid whatever decides the extension: a p above the floor is
    final, and a pair at the floor stays at it unless its extended p is smaller). The moves
    come from ``seed`` alone, drawn in order; the result
    does not depend on ``workers`` (threads; default torch's thread count). patterns:
    :func:`_patterns` of ``member``, when known.
    """
    if workers is None:
        import torch  # torch takes ~1.5 s to import; the group level does not need it

        workers = max(1, torch.get_num_threads())
    rng = np.random.default_rng(seed)
    n_vox, n_net = member.shape
    codes, net_ptr, net_pat, n_pat = _patterns(member) if patterns is None else patterns
    dtype = np.uint8 if n_pat <= 256 else np.uint16 if n_pat <= 65536 else np.uint32
    points = np.ascontiguousarray(grid.points, np.float64)
    part_of = np.ascontiguousarray(grid.part, np.int64)
    volume = grid.lookup(codes, dtype)
    lattice = grid.lattice(LATTICE)
    m0 = member[lattice].sum(0).astype(np.int64)  # network sizes on the lattice
    if len(an_index) and np.any(an_index[1:] < an_index[:-1]):
        vox = voxel_index[np.argsort(an_index, kind="stable")].astype(np.int32)
    else:  # already by AN (as the association writes them)
        vox = voxel_index.astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(an_index, minlength=n_an))]
                            ).astype(np.int64)
    kobs = np.asarray(k, np.int64)
    b, seen = np.zeros((2, n_an, n_net), np.int64)
    net_of = np.zeros((n_pat, n_net), np.int64)  # pattern -> networks, for the sizes
    for n in range(n_net):
        net_of[net_pat[net_ptr[n]:net_ptr[n + 1]], n] = 1
    active, done = kobs > 0, 0
    with _pool(workers) as imap:
        while True:
            more = n_surrogates if done == 0 else min(9 * done, max_surrogates - done)
            mats = grid.moves(more, rng)  # drawn at once: chunks do not change them
            for start in range(0, more, CHUNK):
                ans = np.flatnonzero(active.any(1)).astype(np.int64)
                if not len(ans):
                    break
                need = lattice.copy()
                _mark(ans, indptr, vox, need)
                rows = np.flatnonzero(need)
                row_of = np.full(n_vox, -1, np.int32)
                row_of[rows] = np.arange(len(rows), dtype=np.int32)
                part = np.ascontiguousarray(mats[start:start + CHUNK])
                lab = np.empty((len(part), len(rows)), dtype)
                counts = np.zeros((len(part), n_pat), np.int64)
                sub_points, sub_part, sub_lattice = points[rows], part_of[rows], lattice[rows]
                list(imap(lambda sl: _labels(sub_points, sub_part, sub_lattice, part[sl],
                                             volume, lab[sl], counts[sl]),
                          _slices(len(part), workers)))
                mt = counts @ net_of  # (T, M) moved network sizes on the lattice
                valid = mt >= MIN_KEPT * m0[None, :]
                lab = np.ascontiguousarray(lab.T)  # (rows, T): a voxel's codes together
                work = np.cumsum(indptr[ans + 1] - indptr[ans])
                cuts = np.searchsorted(work, work[-1] * np.arange(1, workers) / workers)
                list(imap(lambda part_ans: _exceed(part_ans, indptr, vox, row_of, lab, n_pat,
                                                   net_ptr, net_pat, m0, mt, valid, kobs,
                                                   active, b, seen, STOP_AT),
                          [x for x in np.split(ans, cuts) if len(x)]))
            done += more
            p = np.where(b >= STOP_AT, STOP_AT / np.maximum(seen, 1), (b + 1) / (seen + 1.0))
            p = np.where(kobs > 0, np.minimum(p, 1.0), 1.0)
            if done >= max_surrogates:
                break
            # refine the pairs at the floor that BH would reject at the best p they could get
            # (1 / (1 + max_surrogates), with every floor pair there) but does not reject now
            floor = (kobs > 0) & (b == 0) & (seen > 0)
            best = np.where(floor, 1.0 / (1 + max_surrogates), p)
            active = floor & (bh_groups(best, groups) <= q) & (bh_groups(p, groups) > q)
            if not active.any():
                break
    return p, seen


@contextlib.contextmanager
def _pool(workers: int):
    """``map`` over ``workers`` threads (plain map for 1)."""
    if workers <= 1:
        yield map
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="networks") as executor:
        yield executor.map


def _slices(n: int, parts: int) -> list:
    edges = np.linspace(0, n, min(parts, n) + 1).astype(int)
    return [slice(a, z) for a, z in zip(edges[:-1], edges[1:])]


def _patterns(member: np.ndarray):
    """(voxel codes of the networks' overlap patterns, 0 = no network; per network the codes
    of the patterns it is part of, CSR: ptr (M + 1,), codes; number of codes)."""
    packed = np.ascontiguousarray(np.packbits(member, axis=1))
    rows = packed.view(np.dtype((np.void, packed.shape[1]))).reshape(-1)  # one item per voxel
    uniq, codes = np.unique(rows, return_inverse=True)  # (much faster than axis=0)
    uniq = uniq.view(np.uint8).reshape(-1, packed.shape[1])
    pats = np.unpackbits(uniq, axis=1, count=member.shape[1]).astype(bool)  # (U, M)
    some = pats.any(1)
    remap = np.zeros(len(pats), np.int64)
    remap[some] = 1 + np.arange(some.sum())
    pats = np.vstack([np.zeros((1, member.shape[1]), bool), pats[some]])  # code 0: none
    ptr = np.concatenate([[0], np.cumsum(pats.sum(0))]).astype(np.int64)
    net_pat = np.concatenate([np.flatnonzero(pats[:, m]) for m in range(pats.shape[1])]
                             + [np.zeros(0, np.int64)]).astype(np.int64)
    return remap[codes.reshape(-1)], ptr, net_pat, len(pats)


def data_networks(spec: str, mask_img, space: str | None):
    """(network masks over the in-mask voxels or None, the atlases, why they do not fit the
    data's ``space`` or None) for ``--atlas`` ``spec``."""
    atlases = load_networks(spec, grayordinates=isinstance(mask_img, nib.Cifti2Image))
    problem = space_problem(atlases, space)
    return (None if problem else network_masks(atlases, mask_img)), atlases, problem
