"""Atlases: the shipped Yeo-17 and Schaefer options (names, counts, hemispheres, the Yeo-17
label trap), a user atlas (resampled, named, bad files refused) and the space check."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_vlm.analysis.atlases import (ATLAS_DIR, atlas_digest, labels_path, load_networks,
                                       shipped_atlas, space_description, space_problem,
                                       user_atlas)
from bids_vlm.analysis.networks import data_networks, network_masks
from bids_vlm.errors import DataError


def _values(atlas):
    return np.asarray(atlas.img.dataobj).astype(int)


def _yeo7_parent(atlas, names):
    """{network of ``atlas``: the Yeo-7 network holding most of its voxels}."""
    yeo7 = shipped_atlas("yeo7")
    y7 = _values(yeo7)
    by_value = {v: n for n, vs in yeo7.networks.items() for v in vs}
    data = _values(atlas)
    out = {}
    for name in names:
        counts = np.bincount(y7[np.isin(data, atlas.networks[name])], minlength=8)
        out[name] = by_value.get(int(counts[1:].argmax()) + 1)
    return out


def test_yeo17_names_follow_the_volume_not_the_neuroparc_csv():
    atlases = load_networks("yeo17")
    yeo17 = atlases[0]
    assert len(yeo17.networks) == 17 and [a.networks for a in atlases[1:]] == [
        {"Language": atlases[1].networks["Language"]}]
    table = pd.read_csv(ATLAS_DIR / "Yeo-17_labels.tsv", sep="\t")
    assert list(yeo17.networks) == table.name.tolist()
    assert yeo17.networks["LimbicA"] == (9,) and yeo17.networks["DefaultB"] == (17,)
    parents = _yeo7_parent(yeo17, yeo17.networks)
    expected = dict(zip(table.name, table.yeo7_network))
    expected["SalVentAttnB"] = "Frontoparietal"  # split ~49/48 with VentralAttention
    assert parents == expected
    with open(ATLAS_DIR / "Yeo-17.csv") as handle:  # the trap: upstream names value 9 Salience
        upstream = {int(v): n for v, n in csv.reader(handle)}
    assert "Salience" in upstream[9] and parents["LimbicA"] == "Limbic"
    # temporal pole (LimbicA) lies below the orbitofrontal LimbicB; DefaultB is left-lateralised
    xyz = _world(yeo17)
    z = {n: xyz[np.isin(_values(yeo17)[_inside(yeo17)], v), 2].mean()
         for n, v in yeo17.networks.items()}
    assert z["LimbicA"] < z["LimbicB"] - 10
    x = xyz[np.isin(_values(yeo17)[_inside(yeo17)], yeo17.networks["DefaultB"]), 0]
    assert (x < 0).mean() > 0.6
    assert yeo17.visual == ("VisCent", "VisPeri") and atlases[1].language == ("Language",)


def _inside(atlas):
    return _values(atlas) > 0


def _world(atlas):
    ijk = np.argwhere(_inside(atlas))
    return ijk @ atlas.img.affine[:3, :3].T + atlas.img.affine[:3, 3]


@pytest.mark.parametrize("n", [200, 400])
def test_schaefer_parcels_named_with_their_hemisphere_and_network(n):
    atlases = load_networks(f"schaefer{n}")
    parcels = atlases[0]
    assert len(parcels.networks) == n and "Language" in atlases[1].networks
    names = list(parcels.networks)
    assert names[0] == "LH_Vis_1" and names[-1].startswith("RH_Default_")
    assert all(len(v) == 1 for v in parcels.networks.values())
    assert sorted(v[0] for v in parcels.networks.values()) == list(range(1, n + 1))
    assert len(parcels.visual) == sum("_Vis_" in name for name in names) > 10
    values = _values(parcels)[_inside(parcels)]
    x = _world(parcels)[:, 0]
    mean_x = pd.Series(x).groupby(values).mean()
    hemi = {v[0]: name[:2] for name, v in parcels.networks.items()}
    assert all((mean_x[v] < 0) == (h == "LH") for v, h in hemi.items())
    net7 = {"Vis": "Visual", "SomMot": "Somatomotor", "DorsAttn": "DorsalAttention",
            "SalVentAttn": "VentralAttention", "Limbic": "Limbic", "Cont": "Frontoparietal",
            "Default": "Default"}
    parents = _yeo7_parent(parcels, names)
    agree = np.mean([parents[name] == net7[name.split("_")[1]] for name in names])
    assert agree > 0.94  # PROVENANCE.md: 191/200 and 389/400


def _user_atlas(folder, name="atlas-toy_space-T1w_dseg", shape=(10, 12, 10), zoom=4.0):
    """Two labelled boxes (values 1 and 2 named A, value 3 named B) on a coarse grid."""
    data = np.zeros(shape, np.int16)
    data[:5, :, :] = 1
    data[5:, :6, :] = 2
    data[5:, 6:, :] = 3
    affine = np.diag([zoom, zoom, zoom, 1.0])
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    pd.DataFrame({"index": [1, 2, 3], "name": ["A", "A", "B (right)"]}).to_csv(
        labels_path(path), sep="\t", index=False)
    return path


def test_user_atlas_resampled_to_the_bold_grid_and_named(tmp_path):
    path = _user_atlas(tmp_path)
    atlas = user_atlas(path)
    assert atlas.networks == {"A": (1, 2), "B_right": (3,)}  # shared names merge
    assert atlas.space == "T1w" and str(path) in atlas.source
    bold = nib.Nifti1Image(np.ones((12, 14, 12), np.uint8), np.diag([3.0, 3.0, 3.0, 1.0]))
    masks = network_masks([atlas], bold)
    ijk = np.argwhere(np.ones((12, 14, 12), bool))
    x, y = ijk[:, 0] * 3.0, ijk[:, 1] * 3.0
    assert masks["A"].shape == (12 * 14 * 12,)  # inside the atlas field of view
    # nearest neighbour: label 1 up to x = 16 mm, labels 2 / 3 from x = 20 mm (y < / >= 24 mm)
    left, right, front = x < 18, x > 18, y > 22
    assert masks["A"][left].all() and masks["A"][right & ~front].all()
    assert masks["B_right"][right & front].all() and not masks["A"][right & front].any()
    assert not masks["B_right"][left | ~front].any()
    masks2, atlases, problem = data_networks(str(path), bold, "T1w")
    assert problem is None and set(masks2) == {"A", "B_right"}


def test_user_atlas_errors_name_the_file(tmp_path):
    path = _user_atlas(tmp_path)
    labels_path(path).unlink()
    with pytest.raises(DataError, match="labels TSV") as err:
        user_atlas(path)
    assert err.value.exit_code == 64 and err.value.path == str(labels_path(path))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="cannot read the atlas image") as err:
        user_atlas(broken)
    assert err.value.path == str(broken)
    with pytest.raises(DataError):
        atlas_digest(str(tmp_path / "missing.nii.gz"))
    path = _user_atlas(tmp_path, "other")
    pd.DataFrame({"label": [1], "roi": ["A"]}).to_csv(labels_path(path), sep="\t", index=False)
    with pytest.raises(DataError, match="columns index and name"):
        user_atlas(path)
    pd.DataFrame({"index": [7], "name": ["A"]}).to_csv(labels_path(path), sep="\t", index=False)
    with pytest.raises(DataError, match="do not name any value"):
        user_atlas(path)


def test_atlas_digest_changes_with_the_user_atlas(tmp_path):
    path = _user_atlas(tmp_path)
    assert atlas_digest("yeo7") == ""
    first = atlas_digest(str(path))
    pd.DataFrame({"index": [1, 2, 3], "name": ["A", "C", "B"]}).to_csv(
        labels_path(path), sep="\t", index=False)
    assert len(first) == 40 and atlas_digest(str(path)) != first


def test_space_check(tmp_path):
    shipped = load_networks("yeo7")
    assert space_problem(shipped, "MNI152NLin2009cAsym") is None
    assert space_problem(shipped, "MNI152NLin6Asym") is None
    for space in ("T1w", "func", None):
        message = space_problem(shipped, space)
        assert "skipped" in message and "--atlas" in message and "MNI152NLin6Asym" in message
        assert (space or "native (no space entity)") in message
    user = [user_atlas(_user_atlas(tmp_path, "atlas-toy_dseg"))]  # no space entity: trusted
    assert space_problem(user, "T1w") is None and space_problem(user, None) is None
    t1w = [user_atlas(_user_atlas(tmp_path))]
    assert space_problem(t1w, "T1w") is None
    assert "T1w" in space_problem(t1w, "MNI152NLin2009cAsym")
    fields = space_description(shipped, "MNI152NLin2009cAsym")
    assert fields["AtlasSpace"] == "MNI152NLin6Asym"
    assert fields["DataSpace"] == "MNI152NLin2009cAsym" and "Yeo" in fields["Atlas"]
    assert space_description(user, None)["AtlasSpace"].startswith("not stated")


@pytest.mark.slow
def test_grayordinate_atlases_shipped_and_user_dlabel(tmp_path):
    """On grayordinates: Yeo-7 (+ language) from the fsLR 91k archive; a user .dlabel.nii
    matched to data by structure and vertex / voxel (another row order, a subset); volume
    atlases refused there; a .dlabel.nii on volume data is a space problem, not a crash."""
    from bids_vlm import cifti
    from bids_vlm.analysis.atlases import load_surface_networks, surface_network_masks

    std = cifti.standard_91k()
    shipped = load_networks("yeo7", grayordinates=True)
    assert [a.space for a in shipped] == ["fsLR", "fsLR"]
    masks = surface_network_masks(shipped, std)
    assert masks["Visual"].sum() == (cifti.shipped_labels("yeo7") == 1).sum()
    assert masks["Language"].sum() > 1000 and set(masks) >= {"Default", "Language"}
    rows = np.r_[0:50, 91200:91282]
    labels = np.zeros(len(std), np.int32)
    labels[rows[:25]], labels[rows[25:50]], labels[91200:91282] = 1, 2, 3
    path = tmp_path / "ca_networks.dlabel.nii"
    nib.save(cifti.dlabel_image(labels, {1: "Visual1", 2: "Language", 3: "Subcortex net"}, std),
             path)
    user = load_networks(str(path))
    assert user[0].networks == {"Visual1": (1,), "Language": (2,), "Subcortex_net": (3,)}
    assert user[0].visual == ("Visual1",) and user[0].language == ("Language",)
    order = rows[::-1]  # data covering these grayordinates only, in another order
    data_masks = surface_network_masks(user, std[order])
    assert np.array_equal(data_masks["Visual1"], np.isin(order, rows[:25]))
    assert np.array_equal(data_masks["Subcortex_net"], order >= 91200)
    assert len(atlas_digest(str(path))) == 40
    for spec in ("schaefer200", str(tmp_path / "x.nii.gz")):
        with pytest.raises(DataError, match="not available on CIFTI grayordinates"):
            load_surface_networks(spec)
    empty = tmp_path / "empty.dlabel.nii"
    nib.save(cifti.dlabel_image(np.zeros(len(std)), {5: "Nothing"}, std), empty)
    with pytest.raises(DataError, match="names no label that its map uses"):
        load_networks(str(empty))
    volume_mask = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    masks, _, problem = data_networks(str(path), volume_mask, "MNI152NLin2009cAsym")
    assert masks is None and "CIFTI label file" not in problem and "fsLR" in problem
