"""The analysis's voxels as NIfTI mask voxels or CIFTI grayordinates: masks of CIFTI runs,
time series matched to the mask's grayordinates, maps and series written as CIFTI, peaks and
group keys placed by structure and vertex / voxel."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes as axes

from bids_vlm import brainmask, cifti
from bids_vlm.inputs.bids import RunSpec
from bids_vlm.derivatives.io import write_map
from bids_vlm.errors import DataError
from bids_vlm.design.bold import load_bold
from bids_vlm.config import BoldConfig

ROWS = np.r_[0:30, 29696:29716, 91200:91230]  # left and right cortex, right thalamus voxels


@pytest.fixture(scope="module")
def bm():
    return cifti.standard_91k()[ROWS]


def _series(path, bm, data, step=2.0):
    img = nib.Cifti2Image(data.astype(np.float32),
                          header=(axes.SeriesAxis(0.0, step, len(data), "SECOND"), bm))
    nib.save(img, str(path))
    return str(path)


def _run(path):
    return RunSpec(subject="01", session=None, task="t", run=1, acquisition=None, bold=path,
                   events="", tr=2.0, n_scans=10)


def test_mask_of_cifti_runs_and_series_on_it(tmp_path, bm):
    data = np.random.default_rng(0).standard_normal((10, len(bm)))
    data[:, 5] = 3.0  # constant: excluded (zeros)
    first = _series(tmp_path / "a.dtseries.nii", bm, data)
    mask_img = brainmask.grayordinate_mask([_run(first)])
    nib.save(mask_img, tmp_path / "mask.dscalar.nii")
    mask = brainmask.load(tmp_path / "mask.dscalar.nii")
    assert brainmask.is_grayordinates(mask) and brainmask.n_rows(mask) == len(bm)
    assert brainmask.brain_models(mask) == bm
    got = load_bold(first, str(tmp_path / "mask.dscalar.nii"))
    expected = data.astype(np.float32).astype(np.float64)
    expected[:, 5] = 0.0
    assert np.array_equal(got, expected)
    # a run with its structures in another order, voxels reversed, is read on the mask's rows
    order = np.r_[79:49:-1, 0:50]
    other = _series(tmp_path / "b.dtseries.nii", bm[order], data[:, order])
    assert np.array_equal(brainmask.load_grayordinates(other, mask),
                          data.astype(np.float32).astype(np.float64))
    with pytest.raises(DataError, match="do not have the same grayordinates"):
        brainmask.grayordinate_mask([_run(first), _run(other)])
    partial = _series(tmp_path / "c.dtseries.nii", bm[:50], data[:, :50])
    with pytest.raises(DataError, match="30 grayordinate.s. of the analysis are missing"):
        brainmask.load_grayordinates(partial, mask)
    with pytest.raises(DataError, match="not applied to CIFTI grayordinates"):
        load_bold(first, mask, BoldConfig(smoothing_fwhm=4.0))


def test_maps_and_series_written_as_cifti(tmp_path, bm):
    mask = brainmask.grayordinate_mask([_run(_series(tmp_path / "a.dtseries.nii", bm,
                                                     np.ones((3, len(bm)))))])
    values = np.arange(len(bm), dtype=np.float32)
    path = write_map(tmp_path / "sub-01_stat-r_statmap.nii.gz", values, mask, {"Units": "r"})
    assert path.name == "sub-01_stat-r_statmap.dscalar.nii"
    img = nib.load(path)
    assert img.header.get_axis(1) == bm and list(img.header.get_axis(0).name) == ["r"]
    assert img.nifti_header.get_intent()[0] == "ConnDenseScalar"
    assert np.array_equal(np.asarray(img.dataobj)[0], values)
    assert json.loads((tmp_path / "sub-01_stat-r_statmap.json").read_text()) == {"Units": "r"}
    series = brainmask.series_image(np.ones((4, len(bm))), mask, tr=1.5)
    assert series.header.get_axis(0).step == 1.5 and series.header.get_axis(1) == bm


def test_peaks_and_keys_place_rows_by_structure(bm):
    mask = cifti.dscalar_image(np.ones((1, len(bm))), ["mask"], bm)
    cols = brainmask.peak_columns(mask, [0, 35, 60])
    assert cols["peak_structure"] == ["CORTEX_LEFT", "CORTEX_RIGHT", "THALAMUS_RIGHT"]
    assert list(cols["peak_vertex"][:2]) == [int(bm.vertex[0]), int(bm.vertex[35])]
    assert cols["peak_vertex"][2] == -1 and cols["peak_i"][0] == -1
    assert [cols["peak_i"][2], cols["peak_j"][2], cols["peak_k"][2]] == list(bm.voxel[60])
    keys = brainmask.row_keys(mask)
    assert len(np.unique(keys)) == len(bm)
    # the same grayordinates in another order (another participant) get the same keys
    order = np.random.default_rng(1).permutation(len(bm))
    other = cifti.dscalar_image(np.ones((1, len(bm))), ["mask"], bm[order])
    assert np.array_equal(brainmask.row_keys(other), keys[order])
    # a participant whose file lacks the cortex keeps the subcortical voxels' keys
    subcortex = cifti.dscalar_image(np.ones((1, 30)), ["mask"], bm[50:])
    assert np.array_equal(brainmask.row_keys(subcortex), keys[50:])
