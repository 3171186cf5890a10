"""Stage 8: BIDS-Derivatives names, atomic writes and files (bids_vlm/derivatives.py)."""
import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from nilearn.masking import apply_mask

import bids_vlm
from bids_vlm.derivatives import (
    BIDSIGNORE,
    atomic_path,
    bids_name,
    dataset_description,
    desc_label,
    init_output,
    write_json,
    write_map,
    write_sparse,
)


def test_bids_name_entity_order_and_none_skipped():
    ents = {"stat": "r", "desc": "x", "space": "MNI", "task": "movie", "sub": "01", "ses": None,
            "acq": "", "run": 2}
    assert bids_name(ents, "statmap", ".nii.gz") == (
        "sub-01_task-movie_run-2_space-MNI_desc-x_stat-r_statmap.nii.gz")
    assert bids_name({"sub": "02"}, "neurons", ".tsv") == "sub-02_neurons.tsv"


@pytest.mark.parametrize("args, expected", [
    (("clip-vit-b-32", "cross-image", 7), "clipvitb32CrossImage07"),
    (("tiny-clip", "text", 0), "tinyclipText00"),
    (("tiny-clip", "cross-text"), "tinyclipCrossText"),
    (("METER_Base",), "meterbase"),
    (("m", "image", 12), "mImage12"),
])
def test_desc_label(args, expected):
    assert desc_label(*args) == expected


def test_atomic_path_replaces_target_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_outputs_are_readable_by_others(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_atomic_path_leaves_nothing_when_block_raises(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_path_keeps_old_target_when_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_map_values_and_sidecar(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask_data = np.zeros((3, 4, 5), np.uint8)
    mask_data[1, 1:3, 2:5] = 1
    mask = nib.Nifti1Image(mask_data, affine)
    values = np.arange(1, 7, dtype=float) * 0.5
    path = tmp_path / "func" / "sub-01_desc-x_stat-r_statmap.nii.gz"
    assert write_map(path, values, mask, {"Units": "r", "Layer": 3}) == path
    img = nib.load(path)
    assert img.shape == (3, 4, 5)
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(apply_mask(img, mask), values)
    assert np.asarray(img.dataobj)[mask_data == 0].max() == 0
    assert json.loads((tmp_path / "func" / "sub-01_desc-x_stat-r_statmap.json").read_text()) == {
        "Units": "r", "Layer": 3}
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "sub-01_desc-x_stat-r_statmap.json", "sub-01_desc-x_stat-r_statmap.nii.gz"]


def test_write_sparse_round_trip(tmp_path):
    entries = {"an_index": np.array([0, 2, 2]), "r": np.array([0.5, -0.25, 0.125]),
               "an_id": np.array(["m/image/00/0", "m/image/00/1", "m/text/01/2"]),
               "empty": np.zeros(0)}
    attrs = {"model": "m", "fdr_q": 0.05, "grid_shape": [2, 3, 4], "affine": np.eye(4)}
    path = write_sparse(tmp_path / "a.h5", entries, attrs)
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["an_index"][()], [0, 2, 2])
        np.testing.assert_array_equal(h5["r"][()], entries["r"])
        assert list(h5["an_id"].asstr()[()]) == list(entries["an_id"])
        assert h5["empty"].shape == (0,)
        assert h5.attrs["model"] == "m" and h5.attrs["fdr_q"] == 0.05
        np.testing.assert_array_equal(h5.attrs["grid_shape"], [2, 3, 4])
        np.testing.assert_array_equal(h5.attrs["affine"], np.eye(4))
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


def test_dataset_description(tmp_path):
    (tmp_path / "dataset_description.json").write_text(json.dumps({"DatasetDOI": "10.1/x"}))
    desc = dataset_description(tmp_path, container="docker")
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "bids_vlm"
    assert desc["GeneratedBy"][0]["Version"] == bids_vlm.__version__
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker"}
    assert desc["SourceDatasets"] == [{"URL": f"file://{tmp_path.resolve()}", "DOI": "10.1/x"}]
    assert "Container" not in dataset_description(tmp_path / "nothere")["GeneratedBy"][0]


def test_init_output(tmp_path):
    out = init_output(tmp_path / "deriv" / "bids_vlm", tmp_path)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    assert desc["GeneratedBy"][0]["Version"] == bids_vlm.__version__
    assert (out / ".bidsignore").read_text() == BIDSIGNORE
    assert "*_statmap.nii.gz" in BIDSIGNORE.splitlines()
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "README.md",
                                                    "dataset_description.json"]


@pytest.mark.parametrize("model, stored, expected", [
    ("tiny-meter", '{"image": 11, "cross-text": 6}', {"image": 11, "cross-text": 6}),
    ("tiny-meter", "{}", {"image": 2, "cross-text": 2}),  # older files: the registry
    ("hf-clip:/some/dir", "{}", {"image": 4, "cross-text": 6}),  # unknown: last layer + 1
])
def test_layers_per_stream_from_the_association_file(tmp_path, model, stored, expected):
    from bids_vlm.derivatives.participant.common import layers_per_stream

    with h5py.File(tmp_path / "a.h5", "w") as h5:
        h5.attrs["model"], h5.attrs["n_layers"] = model, stored
        for key in ("image/00", "image/03", "cross-text/05"):
            h5.create_group(key)
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert layers_per_stream(h5) == expected


def test_tables_and_sidecars_read_back(tmp_path):
    """The one TSV reader and sidecar reader of the derivatives: ``n/a`` is missing and "NA"
    a name; a map's or table's sidecar found by its extension; a missing required sidecar is
    a DataError naming it, an optional one {}."""
    import pandas as pd

    from bids_vlm.derivatives.io import read_sidecar, read_tsv, sidecar_path, write_tsv
    from bids_vlm.errors import DataError

    path = write_tsv(tmp_path / "t_networks.tsv",
                     pd.DataFrame({"network": ["NA", "Visual"], "p": [None, 0.5]}))
    table = read_tsv(path)
    assert table["network"].tolist() == ["NA", "Visual"]
    assert table["p"].isna().tolist() == [True, False]
    for name in ("m_statmap.nii.gz", "m_statmap.dscalar.nii", "m_statmap.nii", "t_networks.tsv"):
        assert sidecar_path(tmp_path / name) == tmp_path / (name.split(".")[0] + ".json")
    assert read_sidecar(path, required=False) == {}
    with pytest.raises(DataError, match="sidecar") as info:
        read_sidecar(tmp_path / "m_statmap.nii.gz")
    assert "m_statmap.json" in str(info.value)
    (tmp_path / "t_networks.json").write_text('{"FDRLevel": 0.05}')
    assert read_sidecar(path) == {"FDRLevel": 0.05}
