"""The architecture comparison end to end (bids_vlm/derivatives/participant/architecture.py,
bids_vlm/derivatives/group/architecture.py, bids_vlm/reports/architecture.py): the CLI run with tiny-clip and
tiny-meter on planted data whose voxels lie in the Visual and Language networks, its MSI and
stream-overlap tables checked against hand computations from the per-model tables, and the
report figures (files next to the HTML, loaded by a headless Chromium when there is one)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from browser import Browser, find_chromium
from conftest import run_cli
from datagen import SPACE, Plant, make_planted_dataset

from bids_vlm.analysis.atlases import default_networks
from bids_vlm.analysis.networks import network_masks
from bids_vlm.stats.bnstore import flat_entries

STEM = f"task-view_space-{SPACE}_desc-tinyclipVstinymeter"
MODELS = {"tiny-clip": "tinyclip", "tiny-meter": "tinymeter"}


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    """2 participants on a 12 mm grid spanning occipital (Visual) and left temporal / frontal
    (Language) cortex: a tiny-clip image AN planted in visual voxels, a tiny-clip text AN in
    language voxels, a tiny-meter cross-text AN in both, tiny-meter image and text ANs in the
    same visual voxels; participant (2 models, layers 0 and 1, association only) and group."""
    affine = np.diag([12.0, 12.0, 12.0, 1.0])
    affine[:3, 3] = [-60, -100, -10]
    shape = (6, 6, 6)
    masks = network_masks(default_networks(), nib.Nifti1Image(np.ones(shape, np.uint8), affine))
    visual = np.flatnonzero(masks["Visual"] & ~masks["Language"]).tolist()
    language = np.flatnonzero(masks["Language"] & ~masks["Visual"]).tolist()
    assert len(visual) >= 18 and len(language) >= 18
    plants = (Plant("image", 1, 7, visual[:12], 0.8),
              Plant("text", 1, 3, language[:12], -0.8),
              Plant("cross-text", 1, 5, visual[12:18] + language[12:18], 0.8, "tiny-meter"),
              Plant("image", 0, 9, visual[:12], 0.8, "tiny-meter"),
              Plant("text", 0, 2, visual[:12], 0.8, "tiny-meter"))
    base = tmp_path_factory.mktemp("arch")
    data = make_planted_dataset(base / "bids", n_subjects=2, shape=shape, affine=affine,
                                plants=plants, unique=False)  # whole regressors planted
    out, work = base / "out", base / "work"
    # the paper's BNs (marginal r, BH per AN): these tests check the architecture tables' sums
    run_cli(data.root, out, "participant", "--models", "tiny-clip", "tiny-meter", "--layers",
            "0", "1", "--no-encoding", "--bn-definition", "marginal", "--fdr-scope", "an", "-q",
            "-w", work)
    run_cli(data.root, out, "group", "-q", "-w", work)
    return {"out": out, "plants": plants}


def _read(path):
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def _func(out, sub):
    return out / f"sub-{sub}" / "func"


def _per_an(folder, prefix):
    """Per-AN model, stream, layer, msi and has_bn of both models, from the per-model tables."""
    frames = []
    for model, desc in MODELS.items():
        neurons = _read(folder / f"{prefix}{STEM.split('_desc-')[0]}_desc-{desc}_neurons.tsv")
        nets = _read(folder / f"{prefix}{STEM.split('_desc-')[0]}_desc-{desc}_networks.tsv")
        assert (nets.an_id == neurons.an_id).all()
        has_bn = (neurons.n_participants_with_bn > 0 if "n_participants_with_bn" in neurons
                  else neurons.n_bn_pos + neurons.n_bn_neg > 0)
        frames.append(pd.DataFrame({"model": model, "an_id": neurons.an_id,
                                    "stream": neurons.stream, "layer": neurons.layer,
                                    "msi": nets.msi, "has_bn": has_bn}))
    return pd.concat(frames, ignore_index=True)


def _check_msi_table(table, per_an):
    """Every row of an MSI table against the same statistics computed here from the per-AN
    indices of the network tables."""
    assert len(table) == 2 * 2 + 4 * 2  # tiny-clip 2 streams, tiny-meter 4, layers 0 and 1
    for row in table.itertuples():
        mine = per_an[(per_an.model == row.model) & (per_an.stream == row.stream)
                      & (per_an.layer == row.layer)]
        msi = mine.msi.dropna().to_numpy()
        assert row.n_ans == len(mine) and row.n_ans_with_bn == mine.has_bn.sum()
        assert row.n_ans_with_msi == len(msi)
        if not len(msi):
            assert np.isnan(row.mean_msi)
            continue
        np.testing.assert_allclose(
            [row.mean_msi, row.median_msi, row.q1_msi, row.q3_msi, row.min_msi, row.max_msi,
             row.share_visual, row.share_language],
            [msi.mean(), np.median(msi), np.percentile(msi, 25), np.percentile(msi, 75),
             msi.min(), msi.max(), (msi > 0.5).mean(), (msi < -0.5).mean()], atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("sub", ["01", "02"])
def test_participant_msi_table_matches_the_network_tables(arch, sub):
    folder = _func(arch["out"], sub)
    table = _read(folder / f"sub-{sub}_{STEM}_msi.tsv")
    per_an = _per_an(folder, f"sub-{sub}_")
    _check_msi_table(table, per_an)
    side = json.loads((folder / f"sub-{sub}_{STEM}_msi.json").read_text())
    assert side["Models"] == ["tiny-clip", "tiny-meter"]
    assert side["LayersPerStream"]["tiny-clip"] == {"image": 4, "text": 4}
    assert side["LayersPerStream"]["tiny-meter"]["cross-text"] == 2
    assert all(c in side for c in table.columns)
    rows = table.set_index(["model", "stream", "layer"])
    # layer 1 of 0..3 (the file keeps 6 digits), layer 1 of 0..1
    assert rows.loc[("tiny-clip", "image", 1), "relative_depth"] == pytest.approx(1 / 3, abs=1e-5)
    assert rows.loc[("tiny-meter", "cross-text", 1), "relative_depth"] == 1.0
    # the planted ANs: visual, language, and both
    msi = per_an.set_index("an_id").msi
    assert msi["tiny-clip/image/01/7"] > 0.5 and msi["tiny-clip/text/01/3"] < -0.5
    assert abs(msi["tiny-meter/cross-text/01/5"]) < 0.5
    assert rows.loc[("tiny-clip", "image", 1), "share_visual"] > 0
    assert rows.loc[("tiny-clip", "text", 1), "share_language"] > 0


def _union(folder, sub, desc, stream, layer):
    """Voxels that are a BN of any AN of ``stream`` layer ``layer``, straight from the files."""
    prefix = f"sub-{sub}_{STEM.split('_desc-')[0]}_desc-{desc}"
    neurons = _read(folder / f"{prefix}_neurons.tsv")
    with h5py.File(folder / f"{prefix}_association.h5") as h5:
        flat = flat_entries(h5)
        an, vox = flat["an_index"], flat["voxel_index"]
    rows = np.flatnonzero((neurons.stream == stream) & (neurons.layer == layer))
    return set(vox[np.isin(an, rows)].tolist())


@pytest.mark.slow
def test_participant_stream_overlap_matches_the_bn_maps(arch):
    sub = "01"
    folder = _func(arch["out"], sub)
    table = _read(folder / f"sub-{sub}_{STEM}_streamoverlap.tsv")
    pairs = set(zip(table.model, table.stream_a, table.stream_b, table.layer_a, table.layer_b))
    assert pairs == {(m, a, b, k, k) for m, a, b in [
        ("tiny-clip", "image", "text"), ("tiny-meter", "image", "text"),
        ("tiny-meter", "cross-image", "cross-text")] for k in (0, 1)}
    for row in table.itertuples():
        a = _union(folder, sub, MODELS[row.model], row.stream_a, row.layer_a)
        b = _union(folder, sub, MODELS[row.model], row.stream_b, row.layer_b)
        assert (row.n_bn_a, row.n_bn_b, row.n_bn_both) == (len(a), len(b), len(a & b))
        assert row.jaccard == pytest.approx(len(a & b) / len(a | b), abs=1e-5)
        assert row.dice == pytest.approx(2 * len(a & b) / (len(a) + len(b)), abs=1e-5)
        assert row.n_voxels == 216
        depth = row.layer_a / (3 if row.model == "tiny-clip" else 1)  # layers 0..3 or 0..1
        assert row.relative_depth == pytest.approx(depth)
    # tiny-meter image 0/9 and text 0/2 share their planted voxels
    meter = table.set_index(["model", "stream_a", "layer_a"]).loc[("tiny-meter", "image", 0)]
    assert meter.n_bn_both >= 12 and meter.jaccard > meter.chance_jaccard


@pytest.mark.slow
def test_group_tables_average_the_participants(arch):
    out = arch["out"]
    group = out / "group"
    msi = _read(group / f"group_{STEM}_msi.tsv")
    _check_msi_table(msi, _per_an(group, "group_"))
    side = json.loads((group / f"group_{STEM}_msi.json").read_text())
    assert side["Participants"] == ["01", "02"]
    overlap = _read(group / f"group_{STEM}_streamoverlap.tsv")
    subs = [_read(_func(out, s) / f"sub-{s}_{STEM}_streamoverlap.tsv") for s in ("01", "02")]
    for col in ("jaccard", "dice", "n_bn_both", "chance_jaccard"):
        np.testing.assert_allclose(overlap[col], (subs[0][col] + subs[1][col]) / 2, atol=1e-5)
    np.testing.assert_allclose(overlap.sd_jaccard, np.std(
        [subs[0].jaccard, subs[1].jaccard], axis=0, ddof=1), atol=1e-5)
    assert (overlap.n_participants == 2).all()


@pytest.mark.slow
@pytest.mark.parametrize("page, figdir, prefix", [("sub-01.html", "sub-01/figures", "sub-01_"),
                                                  ("group.html", "group/figures", "group_")])
def test_report_shows_the_architecture_figures(arch, page, figdir, prefix):
    out = arch["out"]
    text = (out / page).read_text()
    assert "Architecture: tiny-clip vs tiny-meter" in text
    for name in ("msi", "streamoverlap"):
        fig = f"{figdir}/{prefix}{STEM}_{name}.png"
        assert f"src='{fig}'" in text and (out / fig).is_file()
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium to open the report in")
    browser = Browser(chromium)
    try:
        result = browser.open((out / page).as_uri())
    finally:
        browser.close()
    assert result["errors"] == []
    loaded = {i["src"] for i in result["images"] if i["complete"] and i["naturalWidth"] > 0}
    assert {f"{figdir}/{prefix}{STEM}_{n}.png" for n in ("msi", "streamoverlap")} <= loaded


@pytest.mark.slow
def test_outputs_with_two_models_pass_the_bids_validator(arch):
    exe = Path(sys.executable).parent / "bids-validator-deno"
    exe = str(exe) if exe.exists() else shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno is not installed")
    proc = subprocess.run([exe, str(arch["out"]), "--json"], capture_output=True, text=True,
                          timeout=600)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    assert [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"] == []


def test_report_section_without_msi_table(tmp_path):
    """Native space: only the overlap table; the section draws its figure and says why the
    index is missing."""
    from bids_vlm.reports.architecture import architecture_sections

    table = pd.DataFrame({"model": "m", "stream_a": "image", "stream_b": "text",
                          "layer_a": [0, 1], "layer_b": [0, 1], "relative_depth": [0.0, 1.0],
                          "jaccard": [0.2, 0.4], "dice": [0.3, 0.5],
                          "chance_jaccard": [0.1, 0.1]})
    path = tmp_path / "sub-01_task-x_desc-mVsn_streamoverlap.tsv"
    table.to_csv(path, sep="\t", index=False)
    path.with_suffix(".json").write_text(json.dumps({"Models": ["m", "n"]}))
    figdir = tmp_path / "figures"
    figdir.mkdir()
    page = "".join(architecture_sections([path], figdir, tmp_path))
    assert "Architecture: m vs n" in page and "Modality specificity not computed" in page
    assert [p.name for p in figdir.iterdir()] == ["sub-01_task-x_desc-mVsn_streamoverlap.png"]
    assert "src='figures/sub-01_task-x_desc-mVsn_streamoverlap.png'" in page
