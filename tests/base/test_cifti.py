"""CIFTI grayordinates: the shipped 91k brain models and atlases, dtseries read, dscalar and
dlabel written and read back, atlases matched to partial, reordered and flipped data by
structure and vertex / voxel (issue 16)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes as axes

from bids_vlm import cifti
from bids_vlm.errors import DataError


@pytest.fixture(scope="module")
def std():
    return cifti.standard_91k()


def _dtseries(path, bm, n_frames=12, step=0.8):
    data = np.random.default_rng(0).standard_normal((n_frames, len(bm))).astype(np.float32)
    img = nib.Cifti2Image(data, header=(axes.SeriesAxis(0.0, step, n_frames, "SECOND"), bm))
    img.nifti_header.set_intent("ConnDenseSeries")
    img.to_filename(str(path))
    return data


def test_standard_91k_layout(std):
    assert len(std) == 91282
    names = [str(n).replace("CIFTI_STRUCTURE_", "") for n, _, _ in std.iter_structures()]
    assert names[:2] == ["CORTEX_LEFT", "CORTEX_RIGHT"] and len(names) == 21
    assert std.surface_mask.sum() == 59412 and std.nvertices["CIFTI_STRUCTURE_CORTEX_LEFT"] == 32492
    assert std.volume_shape == (91, 109, 91) and std.affine[0, 0] == -2.0
    assert cifti.location(std, 0) == {"structure": "CORTEX_LEFT", "vertex": 0}
    assert cifti.location(std, 91281)["structure"] == "THALAMUS_RIGHT"


def test_shipped_atlases_are_where_they_belong(std):
    """Yeo-7 covers the cortex of both hemispheres with its 7 networks and nothing below;
    the left language parcels (1-13) lie in left structures, the right ones (19-31) in right."""
    yeo7 = cifti.shipped_labels("yeo7")
    cortex = std.surface_mask
    assert set(np.unique(yeo7[cortex])) == set(range(8)) and not yeo7[~cortex].any()
    assert (yeo7[cortex] > 0).mean() > 0.98
    assert set(np.unique(cifti.shipped_labels("yeo17"))) == set(range(18))
    lang = cifti.shipped_labels("language")
    left = np.char.endswith(std.name.astype(str), "_LEFT")
    right = np.char.endswith(std.name.astype(str), "_RIGHT")
    assert (left[(lang >= 1) & (lang <= 13)]).mean() > 0.95
    assert (right[lang >= 19]).mean() > 0.95
    assert 0.1 < (lang[cortex] > 0).mean() < 0.4
    with pytest.raises(KeyError, match="shipped: yeo7"):
        cifti.shipped_labels("glasser")


def test_dtseries_read(tmp_path, std):
    data = _dtseries(tmp_path / "x.dtseries.nii", std[:500] + std[-20:])
    got = cifti.read_dtseries(tmp_path / "x.dtseries.nii")
    assert np.array_equal(got.data, data) and got.step == pytest.approx(0.8)
    assert got.brain_models == std[:500] + std[-20:]


def test_dscalar_round_trip(tmp_path, std):
    maps = np.random.default_rng(1).standard_normal((2, len(std))).astype(np.float32)
    path = cifti.write_dscalar(tmp_path / "m_stat-r_statmap.dscalar.nii", maps, ["r", "z"], std)
    img = nib.load(str(path))
    assert img.nifti_header.get_intent()[0] == "ConnDenseScalar"
    assert list(img.header.get_axis(0).name) == ["r", "z"]
    assert img.header.get_axis(1) == std and np.array_equal(np.asarray(img.dataobj), maps)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    with pytest.raises(ValueError, match="do not match"):
        cifti.dscalar_image(maps, ["r"], std)


def test_atlas_matched_by_structure_and_index_not_position(std):
    """Data with the right cortex only in reverse order, plus a thalamus on a flipped (RAS)
    grid with its rows shuffled, get the atlas labels of the same vertices and voxels."""
    labels = np.arange(len(std)) + 1
    right = [s for n, w, s in std.iter_structures() if n.endswith("CORTEX_RIGHT")][0]
    thal_rows = np.flatnonzero(std.name == "CIFTI_STRUCTURE_THALAMUS_LEFT")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 90  # i' = 90 - i: the same voxels, x axis flipped
    ras_affine = std.affine @ np.linalg.inv(flip)
    shuffle = np.random.default_rng(2).permutation(len(thal_rows))
    ijk = std.voxel[thal_rows][shuffle]
    ijk_ras = nib.affines.apply_affine(flip, ijk).astype(int)
    data_bm = (axes.BrainModelAxis.from_surface(right.vertex[::-1], 32492, "CortexRight")
               + axes.BrainModelAxis("ThalamusLeft", voxel=ijk_ras, affine=ras_affine,
                                     volume_shape=(91, 109, 91)))
    rows = cifti.match_rows(data_bm, std)
    right_rows = np.flatnonzero(std.name == "CIFTI_STRUCTURE_CORTEX_RIGHT")
    assert np.array_equal(rows[:len(right_rows)], right_rows[::-1])
    assert np.array_equal(rows[len(right_rows):], thal_rows[shuffle])
    assert np.array_equal(cifti.labels_on(data_bm, std, labels), labels[rows])


def test_structures_the_atlas_lacks_get_no_label(std):
    extra = axes.BrainModelAxis("CortexLeft", vertex=np.arange(5), nvertices={
        "CIFTI_STRUCTURE_CORTEX_LEFT": 32492}) + axes.BrainModelAxis(
        "Cerebellum", voxel=np.array([[1, 1, 1]]), affine=std.affine, volume_shape=(91, 109, 91))
    # CIFTI_STRUCTURE_CEREBELLUM is not a 91k structure (it has CEREBELLUM_LEFT / _RIGHT)
    rows = cifti.match_rows(extra, std)
    assert rows[-1] == -1 and (rows[:5] >= 0).all()


def test_other_density_or_grid_is_an_error(std):
    dense = axes.BrainModelAxis.from_surface(np.arange(10), 163842, "CortexLeft")
    with pytest.raises(DataError, match="163842 mesh vertices in the data but 32492"):
        cifti.match_rows(dense, std)
    shifted = std.affine.copy()
    shifted[:3, 3] += 1.0  # half a voxel off
    off = axes.BrainModelAxis("ThalamusLeft", voxel=np.array([[10, 10, 10]]), affine=shifted,
                              volume_shape=(91, 109, 91))
    with pytest.raises(DataError, match="voxel grid"):
        cifti.match_rows(off, std)


def test_dlabel_round_trip_and_bad_files(tmp_path, std):
    labels = cifti.shipped_labels("yeo7")
    path = tmp_path / "yeo7.dlabel.nii"
    cifti.dlabel_image(labels, {1: "Visual", 7: "Default"}, std).to_filename(str(path))
    got, names, bm = cifti.read_dlabel(path)
    assert np.array_equal(got, labels) and names == {1: "Visual", 7: "Default"} and bm == std
    bad = tmp_path / "bad.dtseries.nii"
    bad.write_bytes(b"not a cifti")
    with pytest.raises(DataError, match="bad.dtseries.nii"):
        cifti.read_dtseries(bad)
    nifti = tmp_path / "vol.nii"
    nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(str(nifti))
    with pytest.raises(DataError, match="not a CIFTI-2"):
        cifti.read_dtseries(nifti)
    with pytest.raises(DataError, match="not labels"):
        cifti.read_dlabel(cifti.write_dscalar(tmp_path / "s.dscalar.nii", labels, "x", std))
