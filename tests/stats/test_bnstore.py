"""The compact BN store (bids_vlm/stats/bnstore.py): pack / unpack round trips with signs
and empty ANs, top-K selection with ties, --keep-entries 0 and -1, the HDF5 layout (compressed
datasets, copies, older layouts), and the CLI's _association.h5 in that layout."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from bids_vlm.stats import bnstore


def _entries(seed=0, n_ans=7, n_vox=50):
    """Random significant entries (unsorted), with ANs 0, 3 and the last without any."""
    rng = np.random.default_rng(seed)
    an, vox = [], []
    for a in range(n_ans):
        if a in (0, 3, n_ans - 1):
            continue
        v = rng.choice(n_vox, rng.integers(1, 20), replace=False)
        an += [a] * len(v)
        vox += v.tolist()
    order = rng.permutation(len(an))
    an, vox = np.array(an)[order], np.array(vox)[order]
    r = rng.uniform(0.2, 0.9, len(an)) * rng.choice([-1, 1], len(an))
    z = (r * 10).astype(np.float32)
    p = 10.0 ** -np.abs(z * 30)  # below float32's range: kept as float64
    return an, vox, r.astype(np.float32), z, p


def test_pack_round_trip_with_signs_and_empty_ans():
    an, vox, r, z, p = _entries()
    packed = bnstore.pack(an, vox, r, z, p, n_ans=7, keep=-1)
    assert packed["bn_indptr"].dtype == np.int64 and packed["bn_voxel"].dtype == np.int32
    assert packed["bn_indptr"].shape == (8,)
    counts = np.diff(packed["bn_indptr"])
    assert counts[[0, 3, 6]].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(counts, np.bincount(an, minlength=7))
    bns = bnstore.LayerBNs(packed["bn_indptr"], packed["bn_voxel"])
    got_an, got_vox, sign = bns.entries()
    assert set(zip(got_an.tolist(), got_vox.tolist(), sign.tolist())) == \
        set(zip(an.tolist(), vox.tolist(), np.sign(r).astype(int).tolist()))
    for a in range(7):  # within an AN by increasing voxel
        assert np.all(np.diff(got_vox[got_an == a]) > 0)
    # keep -1: r, z, p of every entry in bn_voxel's order
    lookup = {(a, v): (rr, zz, pp) for a, v, rr, zz, pp in zip(an, vox, r, z, p)}
    want = np.array([lookup[(a, v)] for a, v in zip(got_an, got_vox)])
    np.testing.assert_array_equal(packed["r"], want[:, 0].astype(np.float32))
    np.testing.assert_array_equal(packed["p"], want[:, 2])
    assert packed["p"].min() < 1e-100  # float64, not flushed to 0
    assert "top_voxel" not in packed


def test_codes_sign_and_voxel_zero():
    codes = bnstore.encode_voxels([0, 0, 5], [0.3, -0.3, -0.1])
    assert codes.tolist() == [1, -1, -6] and codes.dtype == np.int32
    big = np.array([0, 2**31 - 2, 7], np.int64)  # int64 or int32 indices, any float r
    assert bnstore.encode_voxels(big, np.float32([0.0, -1.0, 2.0])).tolist() == [1, -(2**31 - 1), 8]
    assert bnstore.encode_voxels(big.astype(np.int32), [1, 1, -1]).tolist() == [1, 2**31 - 1, -8]
    with pytest.raises(ValueError, match="too large"):
        bnstore.encode_voxels([2**31 - 1], [1.0])
    vox, sign = bnstore.decode_voxels(codes)
    assert vox.tolist() == [0, 0, 5] and sign.tolist() == [1, -1, -1]


def test_empty_layer():
    empty = np.zeros(0)
    for keep in (-1, 0, 3):
        packed = bnstore.pack(empty, empty, empty, empty, empty, n_ans=4, keep=keep)
        assert packed["bn_indptr"].tolist() == [0] * 5 and packed["bn_voxel"].shape == (0,)
        if keep >= 0:
            assert packed["top_voxel"].shape == (4, keep)
            assert (packed["top_voxel"] == -1).all() and np.isnan(packed["top_r"]).all()
    bns = bnstore.LayerBNs(packed["bn_indptr"], packed["bn_voxel"])
    assert not bns.union(3).any() and bns.rows([1, 2])[0].shape == (0,)


def test_top_k_order_ties_and_padding():
    # AN 0: |z| 5 at voxels 9 and 2 (a tie), 7 at voxel 4, 1 at voxel 0; AN 1: none;
    # AN 2: one entry
    an = np.array([0, 0, 0, 0, 2])
    vox = np.array([9, 4, 2, 0, 3])
    z = np.array([-5.0, 7.0, 5.0, 1.0, -2.0], np.float32)
    r, p = z / 10, np.full(5, 0.01)
    packed = bnstore.pack(an, vox, r, z, p, n_ans=3, keep=2)
    assert packed["top_voxel"].tolist() == [[4, 2], [-1, -1], [3, -1]]
    np.testing.assert_array_equal(packed["top_z"][0], [7.0, 5.0])
    assert packed["top_r"][2, 0] == np.float32(-0.2) and np.isnan(packed["top_r"][1]).all()
    assert packed["top_voxel"].dtype == np.int32 and packed["top_p"].dtype == np.float64
    three = bnstore.pack(an, vox, r, z, p, n_ans=3, keep=3)
    assert three["top_voxel"][0].tolist() == [4, 2, 9]  # both tied voxels, the smaller first
    wide = bnstore.pack(an, vox, r, z, p, n_ans=3, keep=10)
    assert wide["top_voxel"][0].tolist() == [4, 2, 9, 0] + [-1] * 6
    none = bnstore.pack(an, vox, r, z, p, n_ans=3, keep=0)
    assert none["top_voxel"].shape == (3, 0) and none["bn_voxel"].tolist() == [1, 3, 5, -10, -4]
    with pytest.raises(ValueError):
        bnstore.pack(an, vox, r, z, p, n_ans=3, keep=-2)
    with pytest.raises(ValueError):
        bnstore.pack(an, vox, r, z, p, n_ans=2)


def test_top_k_matches_a_full_sort():
    rng = np.random.default_rng(1)
    n_ans, n_vox = 40, 300
    dense = rng.random((n_ans, n_vox)) < rng.random((n_ans, 1)) * 0.5
    an, vox = np.nonzero(dense)
    z = np.round(rng.normal(0, 4, len(an)), 1).astype(np.float32)  # many ties
    packed = bnstore.pack(an, vox, z / 10, z, np.full(len(an), 0.5), n_ans, keep=15)
    for a in range(n_ans):
        mine = np.flatnonzero(an == a)
        order = mine[np.lexsort((vox[mine], -np.abs(z[mine])))][:15]
        want = np.full(15, -1)
        want[:len(order)] = vox[order]
        np.testing.assert_array_equal(packed["top_voxel"][a], want)


@pytest.mark.parametrize("keep", [-1, 0, 3, 10])
def test_p_left_out_is_computed_from_z_for_the_kept_entries(keep):
    """pack(..., p=None), as the association stage calls it: top_p (or p) is p_values of z,
    the p the association gives its entries; the rest as with p given."""
    from bids_vlm.stats.pvalues import p_values

    an, vox, r, z, _ = _entries(seed=3)
    z = z.astype(np.float32)
    given = bnstore.pack(an, vox, r, z, p_values(z), n_ans=7, keep=keep)
    derived = bnstore.pack(an, vox, r, z, None, n_ans=7, keep=keep)
    assert given.keys() == derived.keys()
    for name in given:
        np.testing.assert_array_equal(derived[name], given[name])
    empty = np.zeros(0)
    packed = bnstore.pack(empty, empty, empty, empty, None, n_ans=2, keep=keep)
    assert np.isnan(packed["p" if keep < 0 else "top_p"]).all()


def test_rows_and_union():
    an, vox, r, z, p = _entries()
    packed = bnstore.pack(an, vox, r, z, p, n_ans=7, keep=0)
    bns = bnstore.LayerBNs(packed["bn_indptr"], packed["bn_voxel"])
    got_an, got_vox = bns.rows([5, 1, 3])
    want = sorted((a, v) for a, v in zip(an, vox) if a in (1, 5))
    assert sorted(zip(got_an.tolist(), got_vox.tolist())) == want
    union = bns.union(50)
    assert set(np.flatnonzero(union)) == set(vox.tolist())


@pytest.mark.parametrize("keep", [-1, 0, 4])
def test_hdf5_layer_round_trip_copy_and_flat_entries(tmp_path, keep):
    an, vox, r, z, p = _entries(seed=2)
    packed = bnstore.pack(an, vox, r, z, p, n_ans=7, keep=keep)
    with h5py.File(tmp_path / "work.h5", "w") as h5:
        grp = h5.create_group("image/00")
        grp["n_pos"] = np.zeros(7)
        bnstore.write_layer(grp, packed)
        legacy = h5.create_group("text/01")  # an older work group: every entry as is
        for name, value in zip(bnstore.ENTRY_FIELDS, (an, vox, r, z, p)):
            legacy[name] = value
        legacy["n_pos"] = np.zeros(7)
    with h5py.File(tmp_path / "work.h5", "r") as h5, h5py.File(tmp_path / "out.h5", "w") as out:
        assert h5["image/00/bn_voxel"].compression == "gzip" and h5["image/00/bn_voxel"].shuffle
        assert h5["image/00"].attrs["keep_entries"] == keep
        seen = [(s, k, off) for s, k, _, off in bnstore.layers(h5)]
        assert seen == [("image", 0, 0), ("text", 1, 7)]
        for s, k, grp, _ in bnstore.layers(h5):
            bns = bnstore.read_layer(grp)
            np.testing.assert_array_equal(bns.indptr, packed["bn_indptr"])
            np.testing.assert_array_equal(bns.codes, packed["bn_voxel"])
            bnstore.copy_layer(grp, out.create_group(f"{s}/{k:02d}"))
        for name in ("image/00", "text/01"):  # a range of ANs: their rows only
            part = bnstore.read_range(h5[name], 2, 5)
            np.testing.assert_array_equal(part.indptr, packed["bn_indptr"][2:6]
                                          - packed["bn_indptr"][2])
            np.testing.assert_array_equal(
                part.codes, packed["bn_voxel"][packed["bn_indptr"][2]:packed["bn_indptr"][5]])
        top = bnstore.read_top(h5["image/00"])
        assert top["keep_entries"] == keep
        if keep >= 0:
            np.testing.assert_array_equal(top["top_voxel"], packed["top_voxel"])
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        assert h5["image/00/bn_voxel"].compression == "gzip"
        flat = bnstore.flat_entries(h5)
    assert len(flat["an_index"]) == 2 * len(an)
    lookup = {(a, v): (rr, np.sign(rr)) for a, v, rr in zip(an, vox, r)}
    for part, full in ((flat["an_index"] < 7, keep < 0), (flat["an_index"] >= 7, True)):
        got = {(a % 7, v): (rr, s) for a, v, rr, s in zip(
            flat["an_index"][part], flat["voxel_index"][part], flat["r"][part],
            flat["sign"][part])}
        assert got.keys() == lookup.keys()
        assert all(got[k][1] == lookup[k][1] for k in got)  # the sign of every BN
        kept = [k for k, v in got.items() if not np.isnan(v[0])]
        assert all(got[k][0] == lookup[k][0] for k in kept)
        expected = len(an) if full else sum(min(keep, c) for c in np.bincount(an))
        assert len(kept) == expected  # keep 0: none; K: up to K per AN; -1 (and older): all


def test_chunks_compressed_here_read_back_as_hdf5_gzip(tmp_path, monkeypatch):
    """Many chunks (the last one partial) of 1-D and 2-D arrays of every stored type, shuffled
    and deflated on threads and written raw, read back by HDF5's own filters unchanged."""
    monkeypatch.setattr(bnstore, "CHUNK_BYTES", 4096)
    rng = np.random.default_rng(9)
    packed = {"keep_entries": 3,
              "bn_indptr": np.cumsum(rng.integers(0, 50, 3001)).astype(np.int64),
              "bn_voxel": rng.integers(-200000, 200000, 25013).astype(np.int32),
              "top_r": rng.standard_normal((1111, 3)).astype(np.float32),
              "top_p": rng.random((1111, 3)),
              "empty": np.zeros((0, 3), np.float32)}
    with h5py.File(tmp_path / "chunks.h5", "w") as h5:
        bnstore.write_layer(h5.create_group("layer"), packed)
    with h5py.File(tmp_path / "chunks.h5", "r") as h5:
        for name, value in packed.items():
            if name == "keep_entries":
                continue
            got = h5[f"layer/{name}"]
            assert got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got[()], value)
            if value.size:
                assert got.compression == "gzip" and got.shuffle
                assert got.chunks[0] * value.itemsize * (value[0].size) <= 4096
                assert got.chunks[0] < len(value)  # several chunks
