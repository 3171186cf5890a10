"""CIFTI grayordinates end to end: fMRIPrep-style ``*_space-fsLR_den-91k_bold.dtseries.nii``
(the 91k cortex and both thalami)
(one participant with fMRIPrep <= 20.x's legacy ``.dtseries.json`` sidecar) with a planted
image AN in the Yeo-7 Visual grayordinates and a planted text AN (negative) in the Default
ones; ``bids_vlm --space fsLR`` must find both, say which networks they drive (spin null),
write dscalar maps on the input's brain models (a noise ceiling too: the runs repeat the
stimulus sequence), a cleaned dtseries, surface figures and the group's dscalar maps."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_vlm import cifti
from conftest import run_cli
from datagen import Plant, make_planted_dataset

pytestmark = pytest.mark.slow
PREFIX = "task-view_space-fsLR_den-91k"


@pytest.fixture(scope="module")
def cifti_run(tmp_path_factory):
    # the whole cortex (the spin null rotates it) and two subcortical structures
    std = cifti.standard_91k()
    keep = np.isin(std.name, ["CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT",
                              "CIFTI_STRUCTURE_THALAMUS_LEFT", "CIFTI_STRUCTURE_THALAMUS_RIGHT"])
    bm = std[np.flatnonzero(keep)]
    yeo = cifti.shipped_labels("yeo7")[keep]
    plants = (Plant("image", 2, 7, np.flatnonzero(yeo == 1).tolist(), 0.6),
              Plant("text", 1, 3, np.flatnonzero(yeo == 7).tolist(), -0.6))
    base = tmp_path_factory.mktemp("cifti")
    data = make_planted_dataset(base / "bids", n_subjects=2, plants=plants, grayordinates=bm,
                                unique=False, same_events=True, repeated=True)
    func = data.root / "derivatives" / "fmriprep" / "sub-02" / "func"
    for side in func.glob("*_bold.json"):  # fMRIPrep <= 20.x: X_bold.dtseries.json, its keys
        side.unlink()
        side.with_name(side.name.replace("_bold.json", "_bold.dtseries.json")).write_text(
            json.dumps({"space": "HCP grayordinates", "grayordinates": "91k",
                        "surface": "fsLR", "surface_density": "32k",
                        "volume": "MNI152NLin6Asym"}))
    out, work = base / "out", base / "work"
    run_cli(data.root, out, "participant", "-q", "-w", work, "--space", "fsLR",
            "--bn-definition", "marginal", "--save-cleaned", "--layers", "1", "2",
            timeout=1800)
    run_cli(data.root, out, "group", "-q", "-w", work, "--bn-definition", "marginal")
    return {"data": data, "out": out, "bm": bm, "yeo": yeo}


def _table(out, sub, kind):
    return pd.read_csv(out / f"sub-{sub}" / "func" / f"sub-{sub}_{PREFIX}_desc-tinyclip_{kind}.tsv",
                       sep="\t")


@pytest.mark.parametrize("sub", ["01", "02"])
def test_planted_ans_found_and_drive_their_networks(cifti_run, sub):
    out, yeo = cifti_run["out"], cifti_run["yeo"]
    neurons = _table(out, sub, "neurons").set_index("an_id")
    image, text = neurons.loc["tiny-clip/image/02/7"], neurons.loc["tiny-clip/text/01/3"]
    n_visual, n_default = int((yeo == 1).sum()), int((yeo == 7).sum())
    assert image.n_bn_pos >= 0.9 * n_visual and text.n_bn_neg >= 0.9 * n_default
    assert image.peak_structure.startswith("CORTEX_") and image.peak_r > 0
    assert yeo[int(image.peak_grayordinate)] == 1 and yeo[int(text.peak_grayordinate)] == 7
    nets = _table(out, sub, "networks").set_index("an_id")
    assert nets.loc["tiny-clip/image/02/7", "drives"] == "Visual"
    assert nets.loc["tiny-clip/text/01/3", "drives"] == "Default"
    # BNs outside the planted network: false discoveries, about q of them at most
    image_bns = image.n_bn_pos + image.n_bn_neg
    assert image_bns - nets.loc["tiny-clip/image/02/7", "n_pos_Visual"] < 0.1 * image_bns
    side = json.loads((out / f"sub-{sub}" / "func" /
                       f"sub-{sub}_{PREFIX}_desc-tinyclip_networks.json").read_text())
    assert "spin test" in side["Networks"] and side["DataSpace"] == "fsLR"


def test_maps_are_dscalar_on_the_input_grayordinates(cifti_run):
    func, bm = cifti_run["out"] / "sub-01" / "func", cifti_run["bm"]
    assert not list(func.glob("*.nii.gz"))
    img = nib.load(func / f"sub-01_{PREFIX}_desc-tinyclipImage02_stat-bncount_statmap.dscalar.nii")
    assert img.header.get_axis(1) == bm and list(img.header.get_axis(0).name) == ["bncount"]
    count = np.asarray(img.dataobj)[0]
    assert count[cifti_run["yeo"] == 1].mean() > 10 * max(count[cifti_run["yeo"] != 1].mean(), 0.01)
    side = json.loads((func / f"sub-01_{PREFIX}_desc-tinyclipImage02_stat-bncount_statmap.json")
                      .read_text())
    assert side["Units"] == "count"
    # both runs show the same sequence: a noise ceiling, high where the plants are
    ceiling = nib.load(func / f"sub-01_{PREFIX}_desc-noiseceiling_stat-rceiling_statmap.dscalar.nii")
    r = np.asarray(ceiling.dataobj)[0]
    visual = cifti_run["yeo"] == 1
    assert np.median(r[visual]) > 0.3 and np.median(r[cifti_run["yeo"] == 0]) < 0.1
    cleaned = nib.load(func / "sub-01_task-view_run-1_space-fsLR_den-91k_desc-cleaned_bold"
                              ".dtseries.nii")
    assert cleaned.header.get_axis(1) == bm and cleaned.header.get_axis(0).step == 2.0
    html = (cifti_run["out"] / "sub-01.html").read_text()
    for kind in ("bncount", "preferredlayer", "encodingr"):
        figure = f"sub-01_{PREFIX}_desc-tinyclip_stream-image_{kind}.png"
        assert figure in html and (cifti_run["out"] / "sub-01" / "figures" / figure).stat().st_size


def test_group_maps_on_grayordinates(cifti_run):
    group = cifti_run["out"] / "group"
    img = nib.load(group / f"group_{PREFIX}_desc-tinyclipImage02_stat-propbn_statmap.dscalar.nii")
    assert img.header.get_axis(1) == cifti_run["bm"]
    prop = np.asarray(img.dataobj)[0]
    assert prop[cifti_run["yeo"] == 1].mean() > 0.9
    table = pd.read_csv(group / f"group_{PREFIX}_desc-tinyclip_neurons.tsv", sep="\t")
    planted = table.set_index("an_id").loc["tiny-clip/image/02/7"]
    assert planted.n_participants_with_bn == 2 and planted.consistency > 0.8
    html = (cifti_run["out"] / "group.html").read_text()
    for kind in ("meanbncount", "meanencodingr"):
        figure = f"group_{PREFIX}_desc-tinyclip_stream-text_{kind}.png"
        assert figure in html and (group / "figures" / figure).stat().st_size


def test_outputs_pass_the_bids_validator(cifti_run):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "bids-validator-deno"
    exe = str(exe) if exe.exists() else shutil.which("bids-validator-deno")
    if not exe:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    proc = subprocess.run([exe, str(cifti_run["out"]), "--json"], capture_output=True,
                          text=True, timeout=600)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == [], errors
