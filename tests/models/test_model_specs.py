"""Model specs (``open_clip:<arch>:<file>``, ``hf-clip:<dir>``) through the whole CLI: node
names and desc labels built from them are valid, readable, unique and stable; the participant
and group levels run on a random-weight ViT-B-32 checkpoint file and on a tiny Hugging Face
CLIPModel directory, and two specs whose readable names are the same stay apart."""
from __future__ import annotations

import json
import logging
import re
import shutil

import h5py
import pandas as pd
import pytest
import torch

from bids_vlm.inputs.bids import RunSpec
from bids_vlm.cli.run import main
from bids_vlm.config import AnalysisConfig, ModelConfig
from bids_vlm.names import desc_label, model_label
from bids_vlm.progress import QUIET_ENV
from bids_vlm.inputs.units import analysis_units
from workflows.participant import init_participant_wf, model_tag, model_tags

DESC = re.compile(r"[a-z0-9]+")
NODE = re.compile(r"[A-Za-z0-9_]+")
OPEN_CLIP = "open_clip:ViT-B-32:/models/run 1/vitb32.random.safetensors"
SPECS = [OPEN_CLIP, "open_clip:ViT-B-32:/models/run_1/vitb32.random.safetensors",
         "open_clip:ViT-B-16:laion2b_s34b_b88k", "hf-clip:/data/models/tiny_hf",
         "hf-clip:/data/other/tiny_hf", "hf-clip:/data/models/tiny-hf",
         "hf-clip:openai/clip-vit-base-patch32", "hf-clip:../rel/tiny_hf",
         "hf-clip:" + "/very/long" * 40 + "/clip", "hf-clip:/m/" + "a_long_folder_name_" * 5]


def test_registered_names_keep_their_tags_and_labels():
    assert model_tag("tiny-clip") == "tiny_clip"
    assert model_tag("clip-vit-b-32") == "clip_vit_b_32"
    assert desc_label("clip-vit-b-32", "image", 7) == "clipvitb32Image07"
    assert desc_label("tiny-clip", "cross-text") == "tinyclipCrossText"
    assert model_label("tiny-clip-qk") == "tinyclipqk"


def test_spec_tags_and_labels_are_valid_readable_unique_and_stable():
    tags = [model_tag(s) for s in SPECS]
    labels = [model_label(s) for s in SPECS]
    qk = [model_label(f"{s}-qk") for s in SPECS]  # attn ANs: output_model_name adds -qk
    for spec, tag, label in zip(SPECS, tags, labels):
        assert NODE.fullmatch(tag) and len(tag) <= 49, tag
        assert DESC.fullmatch(label) and len(label) <= 48, label
        assert model_tag(spec) == tag and model_label(spec) == label  # the same every run
    assert len(set(tags)) == len(SPECS) and len(set(labels + qk)) == 2 * len(SPECS)
    assert tags[0].startswith("open_clip_ViT_B_32_vitb32_random_")  # the file name, not its path
    assert labels[0].startswith("openclipvitb32vitb32random")
    assert tags[3].startswith("hf_clip_tiny_hf_") and labels[3].startswith("hfcliptinyhf")
    assert labels[6].startswith("hfclipopenaiclipvitbasepatch32")  # a hub id whole
    assert qk[3].startswith("hfcliptinyhfqk")
    assert desc_label(SPECS[3], "image", 0) == labels[3] + "Image00"


def test_participant_graph_with_specs_has_valid_distinct_node_names(tmp_path):
    run = RunSpec(subject="01", session=None, task="view", run=1, acquisition=None,
                  bold="/data/bold.nii.gz", events="/data/events.tsv", tr=2.0, n_scans=20,
                  mask=None, confounds=None, space="MNI152NLin2009cAsym", preprocessed=True,
                  fingerprint="x")
    models = ("tiny-clip", *SPECS, SPECS[0])  # a model named twice is recorded once
    wf = init_participant_wf(units=analysis_units([run]), bids_dir=tmp_path,
                             output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                             config=AnalysisConfig(model=ModelConfig(models=models)))
    extract = {wf.get_node(n).inputs.model_name: n for n in wf.list_node_names()
               if n.startswith("extract_")}
    assert sorted(extract) == sorted({"tiny-clip", *SPECS})
    assert all(NODE.fullmatch(n) for n in wf.list_node_names())
    assert extract[SPECS[3]].endswith(model_tags(SPECS)[SPECS[3]])


# ---- end to end: the real CLI, in process ------------------------------------------------

FAST = ["-q", "--participant-label", "01", "--layers", "0", "--streams", "image",
        "--no-encoding"]
LOGGERS = ("", "bids_vlm", "nipype.workflow", "nipype.interface", "nipype.utils")


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    """main() sets up logging and the quiet switch for the process: undo it after each test."""
    monkeypatch.delenv(QUIET_ENV, raising=False)
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers))
             for n in LOGGERS}
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers


def _run(bids, out, work, *args, level="participant"):
    return main([str(bids), str(out), level, "-w", str(work), *map(str, args)])


def _neurons(out, model, sub="01"):
    """The neuron table of ``model`` and its sidecar (the desc label of the name it is
    written under)."""
    func = out / f"sub-{sub}" / "func"
    found = list(func.glob(f"*_desc-{model_label(model)}_neurons.tsv"))
    assert len(found) == 1, sorted(p.name for p in func.iterdir())
    path = found[0]
    return pd.read_csv(path, sep="\t"), json.loads(path.with_suffix(".json").read_text())


def _check_outputs(out, model, n_ans):
    table, side = _neurons(out, model)
    assert side["Model"] == model  # the full spec, not its label
    assert len(table) == n_ans and set(table.stream) == {"image"} and set(table.layer) == {0}
    assert table.an_id.iloc[0] == f"{model}/image/00/0"
    func = out / "sub-01" / "func"
    desc = desc_label(model, "image", 0)
    assert DESC.fullmatch(model_label(model))
    for stat in ("bncount", "r"):
        maps = list(func.glob(f"*_desc-{desc}_stat-{stat}_statmap.nii.gz"))
        assert len(maps) == 1
        assert json.loads(maps[0].with_name(maps[0].name.replace(".nii.gz", ".json"))
                          .read_text())["Model"] == model
    with h5py.File(next(func.glob(f"*_desc-{model_label(model)}_association.h5"))) as h5:
        assert h5.attrs["model"] == model and len(h5["an_id"]) == n_ans


@pytest.fixture(scope="module")
def vitb32_file(tmp_path_factory):
    """A random-weight open_clip ViT-B-32 saved as a safetensors file."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "vitb32_random.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


@pytest.mark.slow
def test_cli_open_clip_checkpoint_file(planted, vitb32_file, tmp_path):
    model = f"open_clip:ViT-B-32:{vitb32_file}"
    out, work = tmp_path / "out", tmp_path / "work"
    assert _run(planted.root, out, work, "--models", model, *FAST) == 0
    _check_outputs(out, model, 3072)  # ViT-B-32: 4 x 768 image ANs per layer
    node_dirs = {p.name for p in (work / "bids_vlm_participant").iterdir()}
    assert any(n.startswith("extract_") and n.endswith(model_tag(model)) for n in node_dirs)
    # a rerun resumes from the cache: the same node names
    assert _run(planted.root, out, work, "--models", model, *FAST) == 0
    assert {p.name for p in (work / "bids_vlm_participant").iterdir()} == node_dirs


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random-weight transformers CLIPModel with its image processor and tokenizer."""
    from weights import write_tiny_hf_clip

    folder = tmp_path_factory.mktemp("hf") / "tiny_hf"
    folder.mkdir()
    return write_tiny_hf_clip(folder, hidden=32, layers=2)


@pytest.mark.slow
def test_cli_hf_clip_directory_participant_and_group(planted, hf_dir, tmp_path):
    model = f"hf-clip:{hf_dir}"
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["-q", "--layers", "0", "--streams", "image", "--no-encoding", "--models", model]
    assert _run(planted.root, out, work, *args) == 0  # both participants, for the group level
    _check_outputs(out, model, 64)
    assert _run(planted.root, out, work, *args, level="group") == 0
    label = model_label(model)
    group = out / "group"
    assert list(group.glob(f"group_*_desc-{label}Image00_stat-propbn_statmap.nii.gz"))
    table = pd.read_csv(next(group.glob(f"group_*_desc-{label}_neurons.tsv")), sep="\t")
    assert len(table) == 64 and table.an_id.iloc[0] == f"{model}/image/00/0"
    side = json.loads(next(group.glob(f"group_*_desc-{label}_neurons.json")).read_text())
    assert side["Model"] == model  # the whole spec, though it holds "/"
    assert (out / "group.html").is_file()


def test_cli_relative_spec_paths_are_made_absolute(planted, hf_dir, tmp_path, monkeypatch):
    """The nodes run in their own folders: a relative folder or file in a spec is resolved
    when the command line is read, so the run finds it and ``dir`` and ``./dir/`` agree."""
    from bids_vlm.cli.types import _model_name

    monkeypatch.chdir(hf_dir.parent)
    assert _model_name("hf-clip:./tiny_hf/") == _model_name("hf-clip:tiny_hf") == \
        f"hf-clip:{hf_dir.resolve()}"
    assert _model_name("hf-clip:openai/clip-vit-base-patch32") == \
        "hf-clip:openai/clip-vit-base-patch32"  # a hub id stays as it is
    out, work = tmp_path / "out", tmp_path / "work"
    assert _run(planted.root, out, work, "--models", "hf-clip:tiny_hf", *FAST) == 0
    _check_outputs(out, f"hf-clip:{hf_dir.resolve()}", 64)


@pytest.mark.slow
def test_cli_two_specs_with_the_same_readable_name_stay_apart(planted, hf_dir, tmp_path):
    other = tmp_path / "elsewhere" / "tiny_hf"  # same folder name, other path: same words
    shutil.copytree(hf_dir, other)
    models = [f"hf-clip:{hf_dir}", f"hf-clip:{other}"]
    assert model_tag(models[0]).rsplit("_", 1)[0] == model_tag(models[1]).rsplit("_", 1)[0]
    out, work = tmp_path / "out", tmp_path / "work"
    assert _run(planted.root, out, work, "--models", *models, *FAST) == 0
    for model in models:
        _check_outputs(out, model, 64)
    extract = [p for p in (work / "bids_vlm_participant").iterdir()
               if p.name.startswith("extract_")]
    assert len(extract) == 2
    # the two models' comparison (stream overlap) is named after both labels
    overlap = list((out / "sub-01" / "func").glob("*_streamoverlap.tsv"))
    assert len(overlap) == 1
    assert f"desc-{model_label(models[0])}Vs{model_label(models[1])}_" in overlap[0].name
