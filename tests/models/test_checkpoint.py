"""The safe checkpoint loader: state dicts load, classes it cannot import become inert data,
and a file that would run code (a TorchScript archive, a pickle that calls a function) is
refused before anything runs, through every path a user takes. Each payload is first shown to
be live: loaded the usual way, it does write its file."""
from __future__ import annotations

import pickle
import shutil
import sys
import tarfile
import zipfile
from collections import OrderedDict

import pytest
import torch
from weights import (_MakeDir, pickle_payloads, save_lightning_style, save_pth_payload,
                     save_torchscript_payload, write_payload, write_pickle_payload)

from bids_vlm.errors import DataError
from bids_vlm.models.checkpoint import (UnsafeCheckpointError, check_checkpoint_file, safe_torch_load, vet_checkpoint)


def test_lightning_checkpoint_loads_without_lightning(tmp_path):
    state = OrderedDict(w=torch.randn(3, 4), ids=torch.arange(5)[None])
    path = tmp_path / "model.ckpt"
    save_lightning_style(path, state, {"num_heads": 12, "max_text_len": 50})
    assert "pytorch_lightning" not in sys.modules
    with pytest.raises(Exception):  # what a plain torch.load does with such a file
        torch.load(path, map_location="cpu", weights_only=False)
    data = safe_torch_load(path)
    assert torch.equal(data["state_dict"]["w"], state["w"])
    assert torch.equal(data["state_dict"]["ids"], state["ids"])
    assert data["hyper_parameters"]["config"] == {"num_heads": 12, "max_text_len": 50}
    (key, value), = data["callbacks"].items()
    assert key.qualified_name == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert float(value["best_model_score"]) == 0.75


@pytest.mark.parametrize("form", ["torch zip", "plain pickle"])
def test_code_in_a_pickle_is_refused_and_not_run(tmp_path, form):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": OrderedDict(w=torch.zeros(2)), "extra": _MakeDir(marker)}
    if form == "torch zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(_MakeDir(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "mkdir" in message and "refused" in message
    assert isinstance(info.value, DataError) and info.value.exit_code == 64


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.randn(100, 100)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read the checkpoint") as info:
        safe_torch_load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("check", [check_checkpoint_file, vet_checkpoint, safe_torch_load])
def test_torchscript_archive_is_refused_before_torch_sees_it(tmp_path, live_payloads, check):
    marker = tmp_path / "marker"
    path = save_torchscript_payload(tmp_path / "x.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        check(path)
    message = str(info.value)
    assert message.startswith(f"{path}: a TorchScript archive") and "constants.pkl" in message
    assert "refused, and nothing from it was run" in message and info.value.exit_code == 64
    assert not marker.exists()


def test_torchscript_payload_writes_no_pth_file(tmp_path, live_payloads):
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    path = save_pth_payload(tmp_path / "x.ckpt", site_dir, tmp_path / "ran")
    with pytest.raises(UnsafeCheckpointError, match="TorchScript archive"):
        safe_torch_load(path)
    assert list(site_dir.iterdir()) == [] and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("form", ["torch zip", "legacy torch.save", "plain pickle"])
@pytest.mark.parametrize("call", ["system", "subprocess.call", "builtins.exec", "builtins.eval"])
def test_pickle_payloads_are_refused_and_not_run(tmp_path, live_payloads, form, call):
    marker = tmp_path / "ran"
    path = write_pickle_payload(tmp_path / "evil.ckpt", pickle_payloads(marker)[call], form)
    for check in (safe_torch_load, vet_checkpoint):
        with pytest.raises(UnsafeCheckpointError) as info:
            check(path)
        assert str(path) in str(info.value) and f"{call}'" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["torchscript", "pth", "pickle"])
def test_meter_loader_refuses_payloads_in_the_model_dir(tmp_path, live_payloads, payload):
    """The path users take: ``<model-dir>/meter-clip16-roberta/x.ckpt``."""
    from bids_vlm.config import ModelConfig
    from bids_vlm.models import load_model
    from bids_vlm.models.meter import NAME, TINY_TOKENIZER

    folder = tmp_path / "models" / NAME
    shutil.copytree(TINY_TOKENIZER, folder / "roberta-base")
    site_dir, marker = tmp_path / "site-packages", tmp_path / "ran"
    site_dir.mkdir()
    path = folder / "x.ckpt"
    write_payload(path, payload, site_dir, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(NAME, ModelConfig(model_dir=str(tmp_path / "models")))
    assert str(info.value).startswith(f"{path}: ") and info.value.exit_code == 64
    assert not marker.exists() and list(site_dir.iterdir()) == []


def _add_record(path, name, data=b"x"):
    """Append a record to the zip torch.save wrote, under its directory prefix."""
    with zipfile.ZipFile(path, "a") as archive:
        prefix = archive.namelist()[0].partition("/")[0]
        archive.writestr(f"{prefix}/{name}", data)


@pytest.mark.parametrize("record, message", [
    ("code/__torch__.py", "a TorchScript archive"), ("constants.pkl", "a TorchScript archive"),
    ("extra.pkl", "records torch.save never writes"), ("data/x", "records torch.save never"),
])
def test_zip_with_other_records_is_refused(tmp_path, record, message):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, path)
    _add_record(path, record)
    with pytest.raises(UnsafeCheckpointError, match=message):
        safe_torch_load(path)


def test_tar_other_than_the_legacy_layout_is_refused(tmp_path):
    path = tmp_path / "model.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("pickle", "tensors"):
            info = tarfile.TarInfo(name)
            tar.addfile(info)
        link = tarfile.TarInfo("storages")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UnsafeCheckpointError, match="not a legacy torch.save checkpoint"):
        safe_torch_load(path)


def test_what_is_not_a_checkpoint_is_a_data_error(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("import os\n")
    with pytest.raises(DataError, match="not a PyTorch checkpoint") as info:
        check_checkpoint_file(path)
    assert not isinstance(info.value, UnsafeCheckpointError) and str(path) in str(info.value)


@pytest.mark.parametrize("form", ["torch zip", "legacy torch.save", "safetensors"])
def test_plain_state_dicts_still_load(tmp_path, form):
    from safetensors.torch import save_file

    state = {"w": torch.randn(3, 4), "b": torch.arange(4)}
    path = tmp_path / ("model.safetensors" if form == "safetensors" else "model.pt")
    if form == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(OrderedDict(state), path, _use_new_zipfile_serialization=form == "torch zip")
    loaded = safe_torch_load(path)
    assert sorted(loaded) == ["b", "w"] and all(torch.equal(loaded[k], state[k]) for k in state)
    assert vet_checkpoint(path) == ("safetensors" if form == "safetensors" else
                                    "zip" if form == "torch zip" else "pickle")


def test_python2_names_of_a_legacy_pickle_are_mapped(tmp_path):
    """torch.save's legacy format is protocol 2, which spells ``set`` ``__builtin__.set``."""
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2), "tags": {"a", "b"}}, path, _use_new_zipfile_serialization=False)
    assert b"__builtin__" in path.read_bytes()
    assert safe_torch_load(path)["tags"] == {"a", "b"}


def test_a_pickle_cannot_change_an_allowed_function(tmp_path):
    """BUILD on a global (here setting ``torch._utils._rebuild_tensor_v2.__defaults__``) would
    change it for every later load in the process: refused, the function unchanged."""
    path = tmp_path / "build.pkl"
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00"
                     b"__defaults__(K\x01ts\x86b.")
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    with pytest.raises(UnsafeCheckpointError, match="set attributes of '_rebuild_tensor_v2'"):
        safe_torch_load(path)
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


def test_a_pickle_dressed_as_safetensors_is_not_taken_for_one(tmp_path):
    """Bytes that read as an 8-byte length and "{" but whose header is no JSON object (e.g. a
    pickle's LONG1 opcode, then more opcodes) were taken for safetensors and never unpickled
    by the check, while torch.load reads them as a pickle."""
    from bids_vlm.models.checkpoint import checkpoint_format

    body = pickle.dumps(pickle_payloads(tmp_path / "ran")["builtins.exec"], protocol=2)[2:]
    path = tmp_path / "hybrid.bin"
    path.write_bytes(b"\x8a\x06" + b"\x00" * 6 + b"{" + body + b"." * 2000)
    assert checkpoint_format(path) != "safetensors"
    with pytest.raises(DataError):
        vet_checkpoint(path)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes((5).to_bytes(8, "little") + b"{x: 1" + b"\0" * 64)  # not JSON
    assert checkpoint_format(fake) != "safetensors"
    assert not (tmp_path / "ran").exists()
