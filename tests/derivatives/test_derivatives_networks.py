"""Network derivatives: the space check's message, the enrichment's description and its BH
families (layers), a user atlas on native-space data through the CLI (networks, hierarchy and
lesion tables with both spaces stated), bad atlases exit 64."""
from __future__ import annotations

import dataclasses
import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_vlm.config import AnalysisConfig, NetworkConfig
from bids_vlm.inputs.bids import RunSpec
from bids_vlm.inputs.units import AnalysisUnit, unit_from_json
from bids_vlm.derivatives.participant.networks import layer_count, unit_networks
from conftest import run_cli
from datagen import Plant, make_planted_dataset


def _mask():
    return nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.diag([3.0, 3.0, 3.0, 1.0]))


def test_native_space_without_user_atlas_warns_and_skips(caplog, tmp_path):
    run = RunSpec(subject="01", session=None, task="x", run=1, acquisition=None,
                  bold="sub-01_task-x_run-1_bold.nii.gz", events="e.tsv", tr=2.0, n_scans=10)
    unit = AnalysisUnit("01", None, "x", None, None, None, (run,))
    with caplog.at_level(logging.WARNING, logger="bids_vlm"):
        masks, fields = unit_networks(_mask(), unit, AnalysisConfig())
    assert masks is None and "network analyses skipped" in caplog.text
    assert "--atlas" in caplog.text and "sub-01_task-x_run-1_bold.nii.gz" in caplog.text
    assert fields["DataSpace"] == "native (no space entity)"
    assert fields["AtlasSpace"] == "MNI152NLin6Asym" and "skipped" in fields["Networks"]
    masks, fields = unit_networks(_mask(), dataclasses.replace(unit, space="MNI152NLin2009cAsym"),
                                  AnalysisConfig(networks=NetworkConfig(atlas="yeo17")))
    assert len(masks) == 18 and "MNI152NLin2009cAsym" in fields["Networks"]
    assert masks.grid.ijk.shape == (64, 3) and masks.grid.shape == (4, 4, 4)
    assert "spatial null" in fields["Networks"] and "1000 surrogates" in fields["Networks"]
    assert "p_hypergeom" in fields["Networks"] and "networks of a layer" in fields["Networks"]
    off = AnalysisConfig(networks=NetworkConfig(n_surrogates=0))
    text = unit_networks(_mask(), dataclasses.replace(unit, space="MNI152NLin2009cAsym"), off)[1]["Networks"]
    assert "hypergeometric" in text and "spatial null" not in text


def test_layer_count():
    assert layer_count("tiny-clip", "image", [2]) == (4, "the model's layer count")
    assert layer_count("hf-clip:/x", "text", [0, 5])[0] == 6


def _ball(shape):
    ijk = np.indices(shape).reshape(3, -1).T
    return np.linalg.norm(ijk - (np.array(shape) - 1) / 2, axis=1) < 4.5


@pytest.mark.slow
def test_user_atlas_on_native_data_gives_networks_hierarchy_and_lesion(tmp_path):
    shape = (10, 10, 10)
    head = _ball(shape)
    centre = [int(np.ravel_multi_index((i, 5, 5), shape)) for i in range(3, 8)]
    centre += [int(np.ravel_multi_index((i, 4, 5), shape)) for i in range(3, 8)]
    data = make_planted_dataset(tmp_path / "raw", n_subjects=1, n_runs=2, shape=shape,
                                plants=(Plant("image", 2, 7, centre, 0.8),),
                                baseline=np.where(head, 1000.0, 5.0), with_derivatives=False,
                                unique=False)  # the whole regressor, marginal BNs
    labels = np.where(head, 2, 0)
    labels[centre] = 1
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    atlas = tmp_path / "atlas-planted_dseg.nii.gz"  # no space entity: the data's space
    nib.save(nib.Nifti1Image(labels.reshape(shape).astype(np.int16), affine), atlas)
    pd.DataFrame({"index": [1, 2], "name": ["Net", "Rest"]}).to_csv(
        tmp_path / "atlas-planted_dseg.tsv", sep="\t", index=False)
    out = tmp_path / "out"
    # a 10-voxel network at the centre of a 380-voxel head: too small for the spatial null
    # (a move barely displaces it), so voxels are taken as independent (white noise here)
    run_cli(data.root, out, "participant", "--layers", "2", "--streams", "image", "--atlas",
            atlas, "--n-surrogates", "0", "--bn-definition", "marginal", "-q", "-w",
            tmp_path / "work")
    func = out / "sub-01" / "func"
    nets = pd.read_csv(func / "sub-01_task-view_desc-tinyclip_networks.tsv", sep="\t",
                       keep_default_na=False).set_index("an_id")
    assert "Net" in nets.loc["tiny-clip/image/02/7", "drives"].split(";")
    assert (nets["p_Net"] == nets["p_hypergeom_Net"]).all()  # no spatial null: the same p
    side = json.loads((func / "sub-01_task-view_desc-tinyclip_networks.json").read_text())
    assert "independent voxels" in side["p_hypergeom_Net"]["Description"]
    assert "spatial null" in side["p_Net"]["Description"]
    assert "hypergeometric" in side["Networks"]
    assert side["DataSpace"] == "native (no space entity)"
    assert side["AtlasSpace"].startswith("not stated") and str(atlas) in side["Atlas"]

    hier = pd.read_csv(func / "sub-01_task-view_desc-tinyclip_hierarchy.tsv", sep="\t")
    assert hier.network.tolist() == ["Net", "Rest"] and (hier.n_layers == 4).all()
    best = nib.load(func / "sub-01_task-view_desc-tinyclipImage_stat-preferredlayer_statmap"
                          ".nii.gz").get_fdata().reshape(-1)
    net = hier.set_index("network").loc["Net"]
    assert net.n_voxels == len(centre) and net.n_voxels_with_layer == (best[centre] >= 0).sum()
    assert abs(net.mean_preferred_depth - 2 / 3) < 1e-5  # the only recorded layer: 2 of 0..3
    hside = json.loads((func / "sub-01_task-view_desc-tinyclip_hierarchy.json").read_text())
    assert hside["LayerCount"] == {"image": "the model's layer count"}
    assert hside["DataSpace"] == "native (no space entity)"

    lesion = pd.read_csv(func / "sub-01_task-view_desc-tinyclip_lesion.tsv", sep="\t")
    rows = lesion[lesion.network == "Net"]
    assert rows.stream.unique().tolist() == ["image"] and (rows.layer == 2).all()
    assert rows.n_removed.tolist() == [0, 3, 13, 26, 64, 128]  # of 256 ANs
    full = rows.mean_r_targeted.iloc[0]
    assert full > 0.3 and rows.mean_r_random.iloc[0] == full
    assert (rows.n_ans_with_bn > 100).all()  # tiny-clip's ANs of a layer are redundant: the
    assert (abs(rows[["mean_r_targeted", "mean_r_random"]] - full) < 0.1).all().all()  # same r
    lside = json.loads((func / "sub-01_task-view_desc-tinyclip_lesion.json").read_text())
    assert lside["LesionSteps"] == [0.0, 0.01, 0.05, 0.1, 0.25, 0.5]
    assert lside["AtlasSpace"].startswith("not stated")


@pytest.mark.slow
def test_bad_atlas_exits_64_naming_the_file(tmp_path):
    (tmp_path / "bids").mkdir()
    atlas = tmp_path / "atlas-x_dseg.nii.gz"
    nib.save(_mask(), atlas)
    proc = run_cli(tmp_path / "bids", tmp_path / "out", "participant", "--atlas", atlas,
                   check=False)
    assert proc.returncode == 64 and "atlas-x_dseg.tsv" in proc.stderr
    assert "labels TSV" in proc.stderr
    proc = run_cli(tmp_path / "bids", tmp_path / "out", "participant", "--atlas",
                   tmp_path / "none.nii.gz", check=False)
    assert proc.returncode == 64 and "none.nii.gz: cannot read the atlas image" in proc.stderr
    assert "yeo17" in proc.stderr  # the shipped names are offered
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_enrichment_is_computed_once_and_read_by_outputs(occipital, tmp_path):
    """The enrich node's file is what the networks table shows (and the lesion reads): the
    outputs written from it equal those written by computing the enrichment again."""
    from nipype.utils.filemanip import loadpkl

    from bids_vlm.config import from_json
    from bids_vlm.derivatives.participant import write_unit_outputs

    work = occipital.parent / "work" / "bids_vlm_participant"
    assert len(list(work.glob("enrich_sub_01_*/enrichment.h5"))) == 1
    inputs = loadpkl(next(work.glob("outputs_sub_01_*/_inputs.pklz")))
    assert inputs["enrichment_files"] and len(inputs["enrichment_files"]) == len(
        inputs["association_files"])
    tables = []
    for name, stored in (("stored", inputs["enrichment_files"]), ("again", [])):
        written = write_unit_outputs(inputs["association_files"], [], inputs["mask_file"],
                                     unit_from_json(inputs["unit_json"]), tmp_path / name,
                                     inputs["bids_dir"], from_json(inputs["config_json"]),
                                     enrichment_files=stored)
        tables.append(next(p for p in written if str(p).endswith("_networks.tsv")))
    stored, again = (pd.read_csv(t, sep="\t") for t in tables)
    assert stored["drives"].str.contains("Visual").any()  # the planted image AN
    pd.testing.assert_frame_equal(stored, again)
