"""The weight-baking script the Dockerfile runs: its dry run names open_clip's Hugging Face files,
and a local checkpoint lands where the loader finds it (the download itself needs the network)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file

from bids_vlm.cli import bake
from bids_vlm.errors import EXIT_DATA, EXIT_WEIGHTS
from bids_vlm.models.openclip import find_weights


def run_bake(*args):
    return subprocess.run([sys.executable, "-m", "bids_vlm.cli.bake", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_dry_run_names_the_hub_files_and_writes_nothing(tmp_path):
    dest = tmp_path / "models"
    proc = run_bake("--models", "clip-vit-b-32", "clip-vit-b-16", "tiny-clip", "--dest", dest,
                    "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == [
        f"would fetch clip-vit-b-32: timm/vit_base_patch32_clip_224.openai "
        f"[open_clip_model.safetensors] -> {dest}/clip-vit-b-32/open_clip_model.safetensors",
        f"would fetch clip-vit-b-16: timm/vit_base_patch16_clip_224.openai "
        f"[open_clip_model.safetensors] -> {dest}/clip-vit-b-16/open_clip_model.safetensors",
    ]  # tiny-clip has random weights: nothing to fetch
    assert not dest.exists()


def test_dry_run_of_a_hub_clip_goes_to_the_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    fetch = bake.plan("hf-clip:openai/clip-vit-base-patch32", tmp_path / "models")
    assert fetch.repo == "openai/clip-vit-base-patch32" and fetch.target == tmp_path / "hf" / "hub"
    assert "*.safetensors" in fetch.files


@pytest.mark.slow
def test_from_file_installs_where_find_weights_looks(tmp_path, monkeypatch):
    monkeypatch.delenv("BIDS_VLM_MODEL_DIR", raising=False)
    checkpoint = tmp_path / "downloaded.safetensors"
    save_file({"logit_scale": torch.ones(())}, str(checkpoint))
    dest = tmp_path / "models"
    proc = run_bake("--models", "clip-vit-b-32", "--dest", dest, "--from-file", checkpoint)
    assert proc.returncode == 0, proc.stderr
    found = find_weights("clip-vit-b-32", str(dest))
    assert found == dest / "clip-vit-b-32" / "open_clip_model.safetensors"
    assert found.read_bytes() == checkpoint.read_bytes()
    assert found.stat().st_mode & 0o444 == 0o444  # readable by any user (Singularity)
    assert [p.name for p in found.parent.iterdir()] == [found.name]  # no temporary left
    monkeypatch.setenv("BIDS_VLM_MODEL_DIR", str(dest))  # as the image sets it
    assert find_weights("clip-vit-b-32") == found


@pytest.mark.slow
def test_from_file_rejects_a_truncated_checkpoint(tmp_path):
    checkpoint = tmp_path / "broken.safetensors"
    save_file({"w": torch.zeros(64)}, str(checkpoint))
    checkpoint.write_bytes(checkpoint.read_bytes()[:40])
    dest = tmp_path / "models"
    proc = run_bake("--models", "clip-vit-b-16", "--dest", dest, "--from-file", checkpoint)
    assert proc.returncode == EXIT_WEIGHTS
    assert f"{checkpoint}: not a usable safetensors checkpoint" in proc.stderr
    assert not dest.exists()  # checked before anything is written


@pytest.mark.parametrize("args, message", [
    (["--models", "resnet-50"], "cannot bake 'resnet-50'"),
    (["--models", "clip-vit-b-32", "clip-vit-b-16", "--from-file", "x.safetensors"],
     "--from-file needs exactly one of"),
    (["--models", "tiny-clip", "--from-file", "x.safetensors"], "--from-file needs exactly one"),
])
def test_usage_errors(tmp_path, args, message):
    proc = run_bake(*args, "--dest", tmp_path)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_missing_local_file_is_a_weights_error(tmp_path):
    proc = run_bake("--models", "clip-vit-b-32", "--dest", tmp_path,
                    "--from-file", tmp_path / "absent.safetensors")
    assert proc.returncode == EXIT_WEIGHTS and "no such checkpoint file" in proc.stderr


@pytest.mark.slow
def test_meter_checkpoint_from_file_lands_where_the_loader_looks(tmp_path):
    """METER: the checkpoint comes from --from-file (read safely first), the tokenizer folder
    next to it is kept; the baked folder is what load_meter reads."""
    import shutil

    from weights import write_released_checkpoint

    from bids_vlm.config import ModelConfig
    from bids_vlm.models import load_model
    from bids_vlm.models.meter import NAME, TINY_TOKENIZER, find_meter_files, load_meter

    tiny = load_model("tiny-meter", ModelConfig())
    ckpt = next(write_released_checkpoint(tmp_path / "src", tiny).glob("*.ckpt"))
    dest = tmp_path / "models"
    proc = run_bake("--models", NAME, "--dest", dest, "--dry-run")
    assert proc.returncode == 0 and f"roberta-base [vocab.json, merges.txt] -> " \
        f"{dest / NAME / 'roberta-base'}" in proc.stdout
    proc = run_bake("--models", NAME, "--dest", dest)  # no checkpoint given
    assert proc.returncode == EXIT_WEIGHTS and "pass it with --from-file" in proc.stderr
    shutil.copytree(TINY_TOKENIZER, dest / NAME / "roberta-base")  # offline: tokenizer present
    proc = run_bake("--models", NAME, "--dest", dest, "--from-file", ckpt)
    assert proc.returncode == 0, proc.stderr
    assert find_meter_files(str(dest))[0] == dest / NAME / ckpt.name
    assert torch.equal(load_meter(str(dest)).module.token_type_embeddings.weight,
                       tiny.module.token_type_embeddings.weight)


@pytest.mark.slow
def test_meter_bake_refuses_a_pickle_that_runs_code(tmp_path):
    from weights import _MakeDir

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _MakeDir(marker)}, evil)
    proc = run_bake("--models", "meter-clip16-roberta", "--dest", tmp_path / "m",
                    "--from-file", evil)
    assert proc.returncode == EXIT_DATA and "refused" in proc.stderr
    assert not marker.exists() and not (tmp_path / "m" / "meter-clip16-roberta").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model, name, payload", [
    ("meter-clip16-roberta", "x.ckpt", "torchscript"),
    ("meter-clip16-roberta", "x.ckpt", "pth"),
    ("clip-vit-b-32", "x.bin", "torchscript"),
    ("clip-vit-b-32", "x.safetensors", "torchscript"),
    ("clip-vit-b-16", "x.bin", "pickle"),
])
def test_from_file_refuses_code_with_exit_64(tmp_path, live_payloads, model, name, payload):
    """A TorchScript archive (writing a marker, or a .pth into a stand-in site directory) or a
    pickle that calls exec: exit 64, the file named, no traceback, nothing written."""
    from weights import write_payload

    site_dir, marker, evil = tmp_path / "site-packages", tmp_path / "ran", tmp_path / name
    site_dir.mkdir()
    write_payload(evil, payload, site_dir, marker)
    proc = run_bake("--models", model, "--dest", tmp_path / "m", "--from-file", evil)
    assert proc.returncode == EXIT_DATA, proc.stderr
    assert f"bids_vlm.cli.bake: error: {model}: {evil}: " in proc.stderr
    assert ("TorchScript archive" if payload != "pickle" else "builtins.exec") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and list(site_dir.iterdir()) == []
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_from_dir_installs_the_models_it_has_and_fetches_the_others(tmp_path):
    """The Dockerfile's weights/ folder: a model with a folder there is installed from its one
    checkpoint (what a site without hub access does), the others are fetched as before."""
    local = tmp_path / "weights"
    (local / "clip-vit-b-32").mkdir(parents=True)
    checkpoint = local / "clip-vit-b-32" / "mine.safetensors"
    save_file({"logit_scale": torch.ones(())}, str(checkpoint))
    dest = tmp_path / "models"
    proc = run_bake("--models", "clip-vit-b-32", "clip-vit-b-16", "--dest", dest, "--from-dir",
                    local, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"installing clip-vit-b-32 from {checkpoint}"
    assert proc.stdout.splitlines()[1].startswith("would fetch clip-vit-b-16: ")
    proc = run_bake("--models", "clip-vit-b-32", "--dest", dest, "--from-dir", local)
    assert proc.returncode == 0, proc.stderr
    assert find_weights("clip-vit-b-32", str(dest)).read_bytes() == checkpoint.read_bytes()
    save_file({"logit_scale": torch.ones(())}, str(local / "clip-vit-b-32" / "other.safetensors"))
    proc = run_bake("--models", "clip-vit-b-32", "--dest", tmp_path / "m2", "--from-dir", local)
    assert proc.returncode == EXIT_WEIGHTS
    assert "several checkpoints (mine.safetensors, other.safetensors); keep one" in proc.stderr


def test_from_dir_gives_meter_its_checkpoint_and_tokenizer_offline(tmp_path):
    from weights import write_released_checkpoint

    from bids_vlm.config import ModelConfig
    from bids_vlm.models import load_model
    from bids_vlm.models.meter import NAME, TINY_TOKENIZER, load_meter

    tiny = load_model("tiny-meter", ModelConfig())
    write_released_checkpoint(tmp_path / "weights", tiny)  # weights/<NAME>/{*.ckpt, roberta-base}
    assert (tmp_path / "weights" / NAME / "roberta-base" / "vocab.json").is_file()
    dest = tmp_path / "models"
    proc = run_bake("--models", NAME, "--dest", dest, "--from-dir", tmp_path / "weights")
    assert proc.returncode == 0, proc.stderr
    assert (dest / NAME / "roberta-base" / "vocab.json").read_bytes() == \
        (TINY_TOKENIZER / "vocab.json").read_bytes()
    assert torch.equal(load_meter(str(dest)).module.token_type_embeddings.weight,
                       tiny.module.token_type_embeddings.weight)


def test_an_environment_without_open_clip_exits_66_without_a_traceback(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    assert bake.main(["--models", "clip-vit-b-32", "--dest", str(tmp_path)]) == EXIT_WEIGHTS
    err = capsys.readouterr().err
    assert err.startswith("bids_vlm.cli.bake: error: cannot import what baking needs (")
    assert "environment is incomplete or broken" in err and "Traceback" not in err
