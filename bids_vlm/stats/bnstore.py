"""The compact BN store of an association: per layer, each AN's BNs (significant voxels) as CSR
rows with the sign of r in the voxel code, and exact r, z, p only for each AN's top-K voxels.

Every significant pair with its r, z and p cannot be kept at scale (61,440 ANs x 235,375 voxels
with 5% of pairs significant: 720 M entries, 23 GB at 32 bytes each); the analyses need only
which voxels are BNs and the sign of r (BN+ / BN-). A layer of N ANs with E significant pairs
(an HDF5 group, in the work file ``association.h5`` and in the ``_association.h5`` output):

    bn_indptr (N + 1,) int64   the BNs of AN a are entries bn_indptr[a]:bn_indptr[a + 1]
    bn_voxel  (E,) int32       +(v + 1) for r > 0 (BN+), -(v + 1) for r < 0 (BN-), v the voxel
                               index (row of voxel_ijk); within an AN by increasing v
    top_voxel (N, K) int32     each AN's K BNs with the largest |z| (ties: smaller v first), by
                               decreasing |z|; -1 pads ANs with fewer than K BNs
    top_r, top_z (N, K) float32, top_p (N, K) float64
                               their r, z (signed, calibrated) and p (two-sided, uncorrected);
                               NaN in the padding
    attribute keep_entries     K; -1 (``--keep-entries -1``): instead of the top_* datasets,
                               r, z (E,) float32 and p (E,) float64 of every entry, in
                               bn_voxel's order

All datasets are chunked and compressed (HDF5 shuffle + gzip). The functions here are pure
(arrays in, arrays out) apart from :func:`write_layer`, :func:`read_layer`, :func:`read_top`,
:func:`layers` and :func:`flat_entries`, which read and write such groups.
"""
from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bids_vlm.jit import njit
from bids_vlm.stats.pvalues import p_values

# the entries of an AssociationResult (its p computed from z), the datasets of the older layout
ENTRY_FIELDS = ("an_index", "voxel_index", "r", "z", "p")
TOP_FIELDS = ("top_voxel", "top_r", "top_z", "top_p")
FULL_FIELDS = ("r", "z", "p")  # keep_entries -1
CHUNK_BYTES = 1 << 20
LAYOUT = (
    "per layer, group <stream>/<layer> (attributes an_offset: row of an_id of its first AN, "
    "n_ans, keep_entries K): bn_indptr (n_ans + 1,) int64, the BNs of the layer's AN a are "
    "bn_voxel[bn_indptr[a]:bn_indptr[a + 1]]; bn_voxel (E,) int32, +(v + 1) for a BN+ (r > 0) "
    "and -(v + 1) for a BN- (r < 0), v the row of voxel_ijk, increasing within an AN; "
    "top_voxel (n_ans, K) int32, each AN's K BNs with the largest |z| by decreasing |z| (-1: "
    "none), top_r, top_z (float32: r, calibrated signed z) and top_p (float64: two-sided, "
    "uncorrected p) of those voxels (NaN: none); with K = -1, r, z and p (E,) of every BN in "
    "bn_voxel's order instead of the top_* datasets")


@dataclass(frozen=True)
class LayerBNs:
    """One layer's BNs: indptr (N + 1,) int64, codes (E,) int32 (signed voxel codes)."""

    indptr: np.ndarray
    codes: np.ndarray

    @property
    def n_ans(self) -> int:
        return len(self.indptr) - 1

    def entries(self) -> tuple:
        """(an_index (E,) int64 local AN, voxel_index (E,) int64, sign (E,) int8 +1 / -1)."""
        return (np.repeat(np.arange(self.n_ans), np.diff(self.indptr)),
                *decode_voxels(self.codes))

    def union(self, n_vox: int) -> np.ndarray:
        """(n_vox,) bool: voxels that are a BN (either sign) of at least one AN."""
        hit = np.zeros(n_vox, bool)
        hit[np.abs(self.codes.astype(np.int64)) - 1] = True
        return hit

    def rows(self, ans) -> tuple:
        """(an_index (e,) int64, voxel_index (e,) int64) of the BNs of the local ANs ``ans``."""
        ans = np.asarray(ans, np.int64)
        pos = row_positions(self.indptr, ans)
        return (np.repeat(ans, self.indptr[ans + 1] - self.indptr[ans]),
                np.abs(self.codes[pos].astype(np.int64)) - 1)


def encode_voxels(voxel_index, r) -> np.ndarray:
    """(E,) int32 codes +(v + 1) where r > 0, -(v + 1) where r < 0 (r == 0: +; a pair with
    r = 0 has z = 0 and is never significant). voxel_index, r: (E,). One compiled pass (no
    temporaries: a layer at 2 mm has 10-20 M entries)."""
    vox = _indices(voxel_index)
    if len(vox) and int(vox.max()) >= np.iinfo(np.int32).max:
        raise ValueError("voxel index too large for the int32 BN codes")
    codes = np.empty(len(vox), np.int32)
    _encode(vox, np.asarray(r), codes)
    return codes


@njit
def _encode(voxels, r, codes):  # pragma: no cover - compiled
    for e in range(len(voxels)):
        c = np.int32(voxels[e] + 1)
        codes[e] = -c if r[e] < 0 else c


def decode_voxels(codes) -> tuple:
    """(voxel_index (E,) int64, sign (E,) int8) of (E,) signed voxel codes (one compiled pass:
    a layer at 2 mm has 10-20 M)."""
    codes = np.ascontiguousarray(codes)
    voxels, signs = np.empty(len(codes), np.int64), np.empty(len(codes), np.int8)
    _decode(codes, voxels, signs)
    return voxels, signs


@njit
def _decode(codes, voxels, signs):  # pragma: no cover - compiled
    for e in range(len(codes)):
        c = np.int64(codes[e])
        voxels[e] = (c if c > 0 else -c) - 1
        signs[e] = 1 if c > 0 else -1


def row_positions(indptr, rows) -> np.ndarray:
    """(e,) int64 positions of the entries of CSR ``rows`` (in that order). indptr: (N + 1,)."""
    indptr, rows = np.asarray(indptr, np.int64), np.asarray(rows, np.int64)
    start, length = indptr[rows], indptr[rows + 1] - indptr[rows]
    first = np.repeat(np.cumsum(length) - length, length)
    return np.repeat(start, length) + np.arange(int(length.sum())) - first


def _indices(values) -> np.ndarray:
    """An index array as it is when of an integer type (the association's int32: no copy),
    else as int64."""
    values = np.asarray(values)
    return values if values.dtype.kind in "iu" else values.astype(np.int64)


def pack(an_index, voxel_index, r, z, p, n_ans: int, keep: int = 100) -> dict:
    """The compact form (module docstring) of one layer's significant entries.

    an_index, voxel_index, r, z, p: (E,) in any order (an_index < n_ans); p None: the
    association's, :func:`bids_vlm.stats.pvalues.p_values` of z, evaluated for the entries kept
    only; keep: K, the ANs' entries with exact r, z, p (0: none, -1: all). Returns
    {"bn_indptr", "bn_voxel"} and either
    {"top_voxel", "top_r", "top_z", "top_p"} (K >= 0) or {"r", "z", "p"} (K = -1), and
    "keep_entries" (K).
    """
    an, vox = _indices(an_index), _indices(voxel_index)
    r, z = np.asarray(r), np.asarray(z)
    p = None if p is None else np.asarray(p)
    if len(an) and (an.min() < 0 or an.max() >= n_ans):
        raise ValueError(f"an_index outside 0..{n_ans - 1}")
    keep = int(keep)
    if keep < -1:
        raise ValueError("keep must be >= -1")
    key = an.astype(np.int64)
    key *= int(vox.max()) + 1 if len(vox) else 1
    np.add(key, vox, out=key, casting="unsafe")
    if np.any(key[1:] < key[:-1]):  # by AN, then voxel
        order = np.argsort(key, kind="stable")
        an, vox, r, z = an[order], vox[order], r[order], z[order]
        p = None if p is None else p[order]
    del key
    indptr = np.zeros(n_ans + 1, np.int64)
    np.cumsum(np.bincount(an, minlength=n_ans), out=indptr[1:])
    out = {"bn_indptr": indptr, "bn_voxel": encode_voxels(vox, r), "keep_entries": keep}
    if keep < 0:
        out.update(r=r.astype(np.float32), z=z.astype(np.float32),
                   p=p_values(z) if p is None else p.astype(np.float64))
        return out
    top = top_entries(indptr, vox, z, keep)
    pad = top < 0
    pick = np.where(pad, 0, top)
    out["top_voxel"] = np.where(pad, -1, vox[pick] if len(vox) else 0).astype(np.int32)
    picked = {name: value[pick] if len(value) else np.zeros(pick.shape)
              for name, value in (("top_r", r), ("top_z", z), ("top_p", p)) if value is not None}
    if p is None:  # the p of the kept entries only, from their z
        picked["top_p"] = p_values(picked["top_z"].ravel()).reshape(pick.shape)
    for name, dtype in (("top_r", np.float32), ("top_z", np.float32), ("top_p", np.float64)):
        out[name] = np.where(pad, np.nan, picked[name]).astype(dtype)
    return out


def top_entries(indptr, voxel_index, z, keep: int) -> np.ndarray:
    """(N, keep) int64 positions of each AN's ``keep`` entries with the largest |z|, by
    decreasing |z| (ties: smaller voxel index first); -1 pads ANs with fewer entries.

    indptr: (N + 1,) CSR by AN; voxel_index, z: (E,) in that order."""
    indptr = np.asarray(indptr, np.int64)
    n, keep = len(indptr) - 1, int(keep)
    out = np.full((n, max(keep, 0)), -1, np.int64)
    if keep <= 0:
        return out
    mag, vox = np.abs(np.asarray(z, np.float64)), np.asarray(voxel_index)
    counts = np.diff(indptr)
    few = np.flatnonzero((counts > 0) & (counts <= keep))
    if len(few):  # all their entries, ordered: one sort for all of them
        pos = row_positions(indptr, few)
        owner = np.repeat(few, counts[few])
        pos = pos[np.lexsort((vox[pos], -mag[pos], owner))]
        rank = np.arange(len(pos)) - np.repeat(np.cumsum(counts[few]) - counts[few], counts[few])
        out[owner, rank] = pos
    for a in np.flatnonzero(counts > keep):  # select: the keep-th largest |z| and above
        lo, hi = indptr[a], indptr[a + 1]
        m = mag[lo:hi]
        cand = np.flatnonzero(m >= np.partition(m, hi - lo - keep)[hi - lo - keep])
        out[a] = lo + cand[np.lexsort((vox[lo:hi][cand], -m[cand]))][:keep]
    return out


def write_layer(group, packed: dict) -> None:
    """Write :func:`pack`'s arrays into the HDF5 ``group`` (chunked, shuffle + gzip at
    :data:`GZIP_LEVEL`). The chunks are shuffled and compressed here, on two threads (zlib
    releases the GIL), and written as they are (``write_direct_chunk``): HDF5 would compress
    them one after the other on one core, while the association's other core waits (about
    1 s a layer of 3,072 ANs at the paper's scale). Readers see ordinary gzip datasets."""
    group.attrs["keep_entries"] = int(packed["keep_entries"])
    chunks = []
    for name, value in packed.items():
        if name == "keep_entries":
            continue
        value = np.asarray(value)
        if not value.size:
            group.create_dataset(name, data=value)
            continue
        row = value.itemsize * (value.shape[1] if value.ndim == 2 else 1) or 1
        rows = max(1, min(len(value), CHUNK_BYTES // row))
        dataset = group.create_dataset(name, shape=value.shape, dtype=value.dtype,
                                       chunks=(rows, *value.shape[1:]), compression="gzip",
                                       compression_opts=GZIP_LEVEL, shuffle=True)
        chunks += [(dataset, value, start, rows) for start in range(0, len(value), rows)]
    with ThreadPoolExecutor(2) as pool:
        for dataset, offset, blob in pool.map(_compressed_chunk, chunks):
            dataset.id.write_direct_chunk(offset, blob)


GZIP_LEVEL = 1  # deflate level of the BN store: 1.6x faster than h5py's default 4, 9-13% larger


def _compressed_chunk(job):
    """(dataset, chunk offset, bytes) of one chunk as HDF5's shuffle + deflate filters store
    it: a whole chunk (the last one zero-padded), its elements' bytes grouped by position."""
    dataset, value, start, rows = job
    part = value[start:start + rows]
    if len(part) < rows:
        part = np.concatenate([part, np.zeros((rows - len(part), *part.shape[1:]), part.dtype)])
    shuffled = np.ascontiguousarray(part).view(np.uint8).reshape(-1, part.itemsize).T
    offset = (start,) + (0,) * (value.ndim - 1)
    return dataset, offset, zlib.compress(np.ascontiguousarray(shuffled).data, GZIP_LEVEL)


def read_layer(group) -> LayerBNs:
    """The BNs of a layer group (also from an older group holding the entries themselves)."""
    if "bn_indptr" in group:
        return LayerBNs(group["bn_indptr"][()].astype(np.int64), group["bn_voxel"][()])
    packed = pack(*(group[f][()] for f in ENTRY_FIELDS), len(group["n_pos"]), keep=0)
    return LayerBNs(packed["bn_indptr"], packed["bn_voxel"])


def read_range(group, lo: int, hi: int) -> LayerBNs:
    """The BNs of the layer's ANs lo..hi - 1 (their rows only: one slice of bn_voxel)."""
    if "bn_indptr" not in group:
        bns = read_layer(group)
        return LayerBNs(bns.indptr[lo:hi + 1] - bns.indptr[lo],
                        bns.codes[bns.indptr[lo]:bns.indptr[hi]])
    indptr = group["bn_indptr"][lo:hi + 1].astype(np.int64)
    return LayerBNs(indptr - indptr[0], group["bn_voxel"][indptr[0]:indptr[-1]])


def read_top(group) -> dict:
    """{"keep_entries", and "top_*" (N, K) or "r", "z", "p" (E,) (K = -1)} of a layer group."""
    if "bn_indptr" not in group:  # older group: every entry
        packed = pack(*(group[f][()] for f in ENTRY_FIELDS), len(group["n_pos"]), keep=-1)
        return {k: packed[k] for k in ("keep_entries", *FULL_FIELDS)}
    keep = int(group.attrs["keep_entries"])
    return {"keep_entries": keep,
            **{k: group[k][()] for k in (FULL_FIELDS if keep < 0 else TOP_FIELDS)}}


def copy_layer(source, dest) -> None:
    """Copy a layer group's BN datasets (as stored, still compressed) and keep_entries into
    the group ``dest`` (another file's)."""
    if "bn_indptr" not in source:
        packed = pack(*(source[f][()] for f in ENTRY_FIELDS), len(source["n_pos"]), keep=-1)
        write_layer(dest, packed)
        return
    dest.attrs["keep_entries"] = int(source.attrs["keep_entries"])
    for name in ("bn_indptr", "bn_voxel", *TOP_FIELDS, *FULL_FIELDS):
        if name in source:
            source.copy(source[name], dest, name=name)


def layers(h5):
    """Yield (stream, layer, group, an_offset) of a file's layer groups in file order (the
    order of the neuron table's rows); an_offset: the row of its first AN among all ANs."""
    offset = 0
    for stream in h5:
        if not hasattr(h5[stream], "keys"):
            continue
        for layer in h5[stream]:
            group = h5[f"{stream}/{layer}"]
            yield stream, int(layer), group, offset
            offset += layer_size(group)


def layer_size(group) -> int:
    """ANs of a layer group."""
    return len(group["bn_indptr"]) - 1 if "bn_indptr" in group else len(group["n_pos"])


def flat_entries(h5) -> dict:
    """Every layer's BNs as flat arrays (for small files and tests; at scale read a layer at a
    time): {"an_index" (E,) row of an_id, "voxel_index" (E,), "sign" (E,) int8, "r", "z",
    "p" (E,) (NaN where the file does not keep the entry)}. Also reads the older flat layout."""
    if "an_index" in h5:
        r = h5["r"][()]
        return {"an_index": h5["an_index"][()].astype(np.int64),
                "voxel_index": h5["voxel_index"][()].astype(np.int64),
                "sign": np.where(r < 0, -1, 1).astype(np.int8), "r": r, "z": h5["z"][()],
                "p": h5["p"][()]}
    parts = []
    for _, _, group, offset in layers(h5):
        bns = read_layer(group)
        an, vox, sign = bns.entries()
        values = {k: np.full(len(an), np.nan) for k in FULL_FIELDS}
        kept = read_top(group)
        if kept["keep_entries"] < 0:
            values = {k: kept[k] for k in FULL_FIELDS}
        elif kept["top_voxel"].size:
            rows, cols = np.nonzero(kept["top_voxel"] >= 0)
            width = int(vox.max()) + 1 if len(vox) else 1  # entries sorted by (AN, voxel)
            where = np.searchsorted(an * width + vox,
                                    rows * width + kept["top_voxel"][rows, cols])
            for k in FULL_FIELDS:
                values[k][where] = kept[f"top_{k}"][rows, cols]
        parts.append({"an_index": an + offset, "voxel_index": vox, "sign": sign, **values})
    keys = ("an_index", "voxel_index", "sign", *FULL_FIELDS)
    return {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in keys}
