"""Group level: participants' maps and neuron tables combined (bids_vlm/derivatives/group/combine.py)."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_vlm.errors import DataError
from bids_vlm.analysis.group import group_maps
from bids_vlm.derivatives.group.combine import combine_neuron_tables, combine_participants

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SPACE = "MNI152NLin2009cAsym"
SIDECAR = {"Model": "tiny-clip", "Stream": "image", "Layer": 0, "HRFModel": "spm", "Other": 1}


def _map(out, sub, stat, data, affine=AFFINE, ses=None, desc="tinyclipImage00"):
    func = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{sub}_" + (f"ses-{ses}_" if ses else "") + f"task-x_space-{SPACE}"
    path = func / f"{stem}_desc-{desc}_stat-{stat}_statmap.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(SIDECAR))
    return path


def _group_map(out, stat):
    name = f"group_task-x_space-{SPACE}_desc-tinyclipImage00_stat-{stat}_statmap.nii.gz"
    path = out / "group" / name
    return np.asarray(nib.load(path).dataobj), json.loads(
        path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def test_group_maps_bncount():
    stack = np.array([[0, 2, 0, 5], [0, 0, 1, 3], [0, 1, 0, 1]], float).reshape(3, 2, 2, 1)
    out = group_maps(stack, "bncount")
    assert set(out) == {"meanbncount", "propbn"}
    np.testing.assert_allclose(out["meanbncount"].ravel(), [0, 1, 1 / 3, 3])
    np.testing.assert_allclose(out["propbn"].ravel(), [0, 2 / 3, 1 / 3, 1])


def test_group_maps_r_is_fisher_z_mean():
    stack = np.array([[0.1, -0.5, 0.9], [0.3, 0.2, 0.8]]).reshape(2, 3, 1, 1)
    out = group_maps(stack, "r")
    assert set(out) == {"meanr"}
    np.testing.assert_allclose(out["meanr"], np.tanh(np.arctanh(stack).mean(0)))
    assert out["meanr"].ravel()[2] > np.mean([0.9, 0.8])  # not the plain mean
    assert group_maps(stack, "other") == {}


def test_combine_participants_maps(tmp_path):
    c1 = np.array([0, 2, 0, 5, 1, 0, 0, 0]).reshape(2, 2, 2)
    c2 = np.array([0, 0, 4, 3, 1, 0, 0, 2]).reshape(2, 2, 2)
    r1 = np.full((2, 2, 2), 0.5)
    r2 = np.full((2, 2, 2), -0.2)
    for sub, c, r in (("01", c1, r1), ("02", c2, r2)):
        _map(tmp_path, sub, "bncount", c)
        _map(tmp_path, sub, "r", r)
    written = combine_participants(tmp_path)
    assert len(written) == 3 and all(p.parent == tmp_path / "group" for p in written)
    mean, side = _group_map(tmp_path, "meanbncount")
    np.testing.assert_allclose(mean, (c1 + c2) / 2)
    assert {k: side[k] for k in ("Model", "Stream", "Layer")} == {
        "Model": "tiny-clip", "Stream": "image", "Layer": 0}
    assert side["Participants"] == ["01", "02"] and side["Statistic"] == "meanbncount"
    assert "Other" not in side
    prop, _ = _group_map(tmp_path, "propbn")
    np.testing.assert_allclose(prop.ravel(), [0, 0.5, 0.5, 1, 1, 0, 0, 0.5])
    meanr, _ = _group_map(tmp_path, "meanr")
    np.testing.assert_allclose(meanr, np.tanh((np.arctanh(0.5) + np.arctanh(-0.2)) / 2), rtol=1e-6)
    assert not [p for p in (tmp_path / "group").iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("shape, affine", [((3, 2, 2), AFFINE),
                                           ((2, 2, 2), np.diag([3.0, 3.0, 3.0, 1.0]))])
def test_combine_participants_different_grids(tmp_path, shape, affine):
    _map(tmp_path, "01", "bncount", np.zeros((2, 2, 2)))
    _map(tmp_path, "02", "bncount", np.zeros(shape), affine=affine)
    with pytest.raises(DataError, match="different grids"):
        combine_participants(tmp_path)


def test_combine_participants_uses_every_session(tmp_path):
    results = []
    for first_session_value in (1.0, 100.0):
        _map(tmp_path, "01", "bncount", np.full((2, 2, 2), first_session_value), ses="1")
        _map(tmp_path, "01", "bncount", np.full((2, 2, 2), 3.0), ses="2")
        _map(tmp_path, "02", "bncount", np.full((2, 2, 2), 5.0))
        combine_participants(tmp_path)
        results.append(_group_map(tmp_path, "meanbncount")[0].copy())
    # a participant's sessions are averaged, then participants: ((1+3)/2 + 5)/2, ((100+3)/2 + 5)/2
    assert np.allclose(results[0], 3.5) and np.allclose(results[1], 28.25)


def _neurons(out, sub, pos, neg):
    func = out / f"sub-{sub}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"an_id": [f"tiny-clip/image/00/{u}" for u in range(3)],
                          "stream": "image", "layer": 0, "unit": [0, 1, 2],
                          "n_bn_pos": pos, "n_bn_neg": neg, "peak_r": [0.1, 0.2, 0.3]})
    table.to_csv(func / f"sub-{sub}_task-x_space-{SPACE}_desc-tinyclip_neurons.tsv", sep="\t",
                 index=False)


def test_combine_neuron_tables(tmp_path):
    _neurons(tmp_path, "01", [4, 0, 0], [0, 0, 1])
    _neurons(tmp_path, "02", [2, 0, 0], [2, 0, 0])
    written = combine_neuron_tables(tmp_path)
    path = tmp_path / "group" / f"group_task-x_space-{SPACE}_desc-tinyclip_neurons.tsv"
    assert path in written
    table = pd.read_csv(path, sep="\t")
    assert table["an_id"].tolist() == [f"tiny-clip/image/00/{u}" for u in range(3)]
    assert table["unit"].tolist() == [0, 1, 2] and (table["stream"] == "image").all()
    np.testing.assert_allclose(table["mean_bn_pos"], [3, 0, 0])
    np.testing.assert_allclose(table["mean_bn_neg"], [1, 0, 0.5])
    assert table["n_participants_with_bn"].tolist() == [2, 0, 1]
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["Participants"] == ["01", "02"]


def test_combine_participants_includes_neuron_tables(tmp_path):
    _map(tmp_path, "01", "bncount", np.ones((2, 2, 2)))
    _neurons(tmp_path, "01", [1, 0, 0], [0, 0, 0])
    written = combine_participants(tmp_path)
    assert (tmp_path / "group" / f"group_task-x_space-{SPACE}_desc-tinyclip_neurons.tsv") in written


def test_one_sample_encoding_test_by_hand():
    from scipy import stats as st

    from bids_vlm.analysis.group import one_sample

    z = np.zeros((3, 2, 1, 1))
    z[:, 0, 0, 0] = [0.2, 0.3, 0.4]
    z[:, 1, 0, 0] = [0.1, -0.1, 0.05]
    out = one_sample(z)
    t0 = 0.3 / (0.1 / np.sqrt(3))
    assert out["encodingt"][0, 0, 0] == pytest.approx(t0)
    p = st.t.sf([t0, out["encodingt"][1, 0, 0]], 2)
    assert out["encodingq"][0, 0, 0] == pytest.approx(min(1, p[0] * 2))  # BH over 2 voxels
    assert one_sample(z[:1]) == {}


def test_an_consistency_by_hand(tmp_path):
    import h5py

    from bids_vlm.derivatives.group.combine import an_consistency

    from bids_vlm.stats.bnstore import pack, write_layer

    def write(path, ijk, an, vox, flat=False, ids=("m/image/00/0", "m/image/00/1")):
        with h5py.File(path, "w") as h5:
            h5["an_id"] = np.array(ids, dtype=h5py.string_dtype())
            h5["voxel_ijk"] = np.array(ijk)
            h5.attrs["grid_shape"] = [2, 2, 1]
            if flat:  # the older layout: every entry
                h5["an_index"], h5["voxel_index"] = np.array(an), np.array(vox)
            else:
                ones = np.ones(len(an))
                write_layer(h5.create_group("image/00"), pack(an, vox, ones, ones, ones, 2))
        return path

    # participant 1: AN0 at grid voxels {(0,0),(0,1)}; participant 2 (another mask and voxel
    # order, its ANs in another order): AN0 at {(0,1),(1,1)}, AN1 nowhere -> AN0: 1/3, AN1: 0
    for flat in (False, True):
        a = write(tmp_path / "a.h5", [[0, 0, 0], [0, 1, 0]], [0, 0], [0, 1], flat)
        b = write(tmp_path / "b.h5", [[1, 1, 0], [0, 1, 0]], [1, 1], [0, 1], flat,
                  ids=("m/image/00/1", "m/image/00/0"))
        for chunk in (1, 256):  # ANs compared at a time
            res = an_consistency([a, b], chunk=chunk)
            assert res["m/image/00/0"] == pytest.approx(1 / 3) and res["m/image/00/1"] == 0.0
        assert an_consistency([a]) is None
