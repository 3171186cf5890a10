"""A run's BOLD and brain mask read into in-mask series (bids_vlm/design/bold.py)."""
import nibabel as nib
import numpy as np
import pytest

from bids_vlm.design.bold import load_mask
from bids_vlm.errors import DataError
from datagen import write_nifti

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def _bold(tmp_path, data4d, name="bold.nii.gz", affine=AFFINE):
    return write_nifti(tmp_path / name, data4d, np.float32, affine)


def _mask(tmp_path, data3d, name="mask.nii.gz", affine=AFFINE):
    return write_nifti(tmp_path / name, data3d, np.uint8, affine)


def test_load_mask_same_grid(tmp_path):
    bold = _bold(tmp_path, np.ones((4, 4, 4, 3)))
    m = np.zeros((4, 4, 4))
    m[1:3, 1:3, 1:3] = 7
    out = load_mask(bold, _mask(tmp_path, m))
    np.testing.assert_array_equal(np.asarray(out.dataobj), m > 0)
    np.testing.assert_allclose(out.affine, AFFINE)


def test_load_mask_resampled_to_bold_grid(tmp_path):
    bold = _bold(tmp_path, np.ones((6, 6, 6, 3)))
    fine = np.zeros((12, 12, 12))
    fine[2:8, 2:8, 2:8] = 1  # 1.5 mm voxels 2..7 = bold voxels 1..3 (nearest centres 2, 4, 6)
    out = load_mask(bold, _mask(tmp_path, fine, affine=np.diag([1.5, 1.5, 1.5, 1.0])))
    assert out.shape == (6, 6, 6)
    np.testing.assert_allclose(out.affine, AFFINE)
    expected = np.zeros((6, 6, 6), bool)
    expected[1:4, 1:4, 1:4] = True
    np.testing.assert_array_equal(np.asarray(out.dataobj) > 0, expected)


def test_load_mask_computes_epi_mask(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (12, 12, 12, 4))
    data[2:10, 2:10, 2:10] += 1000
    out = load_mask(_bold(tmp_path, data))
    m = np.asarray(out.dataobj) > 0
    assert m.shape == (12, 12, 12)
    assert m[6, 6, 6] and m.sum() > 100
    assert not m[:2].any() and not m[10:].any()  # nothing outside the bright cube


def test_load_mask_empty_is_data_error(tmp_path):
    bold = _bold(tmp_path, np.ones((4, 4, 4, 3)))
    mask = _mask(tmp_path, np.zeros((4, 4, 4)))
    with pytest.raises(DataError, match="empty") as err:
        load_mask(bold, mask)
    assert str(mask) in str(err.value)


@pytest.mark.parametrize("dtype", ["float32", "int16-scaled", "float64", "c-order"])
def test_masked_series_is_nilearns_apply_mask(tmp_path, dtype):
    """The in-mask series equal nilearn's apply_mask (values and voxel order) for the data
    types of real BOLD files, read back from disk (Fortran order) or held in C order."""
    from nilearn import masking

    from bids_vlm.design.bold import masked_series

    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = nib.Nifti1Image((rng.random((9, 11, 7)) > 0.4).astype(np.uint8), affine)
    data = rng.standard_normal((9, 11, 7, 12)) * 100
    kind = {"int16-scaled": np.int16, "float64": np.float64}.get(dtype, np.float32)
    img = nib.Nifti1Image(data.astype(kind), affine)
    if dtype == "int16-scaled":
        img.header.set_slope_inter(0.5, 3.0)
    if dtype == "c-order":
        img = nib.Nifti1Image(np.ascontiguousarray(data.astype(np.float32)), affine)
    else:
        nib.save(img, tmp_path / "bold.nii.gz")
        img = nib.load(tmp_path / "bold.nii.gz")
    ours = masked_series(img, mask)
    theirs = masking.apply_mask(img, mask, ensure_finite=False)
    assert ours.shape == (12, int(mask.get_fdata().sum()))
    # read a few frames at a time (blocks that do not divide the run): the same
    np.testing.assert_array_equal(masked_series(img, mask, frames=5), ours)
    # the type nibabel reads (float64 for float64 or scaled data), no float64 copy of float32
    assert ours.dtype == theirs.dtype
    assert ours.dtype == np.float32 or dtype in ("float64", "int16-scaled")
    np.testing.assert_array_equal(ours, theirs)


def test_masked_series_reads_a_gzipped_run_in_blocks_of_frames(tmp_path):
    """A whole gzipped run read at once held about twice its 4D size (Python's gzip copies
    what it decompresses): blocks of frames keep the peak near the in-mask result."""
    import tracemalloc

    from bids_vlm.design.bold import masked_series

    rng = np.random.default_rng(1)
    data = rng.standard_normal((16, 16, 16, 240)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "bold.nii.gz")
    mask = nib.Nifti1Image((rng.random((16, 16, 16)) > 0.5).astype(np.uint8), np.eye(4))
    img = nib.load(tmp_path / "bold.nii.gz", keep_file_open=True)
    tracemalloc.start()
    try:
        out = masked_series(img, mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, data[mask.get_fdata() > 0].T)
    assert peak < out.nbytes + 0.5 * data.nbytes, (peak, out.nbytes, data.nbytes)


def test_masked_series_other_grid_is_nilearns_error():
    from bids_vlm.design.bold import masked_series

    mask = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    bold = nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="affine"):
        masked_series(bold, mask)
