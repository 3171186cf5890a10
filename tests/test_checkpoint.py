"""The safe checkpoint loader: state dicts load, classes it cannot import become inert data,
and a pickle that would run code is refused before anything runs."""
from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from bids_vlm.errors import DataError
from bids_vlm.models.checkpoint import UnsafeCheckpointError, safe_torch_load


class _MakeDir:
    """Unpickling this calls os.mkdir(path): code run by loading the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def fake_lightning_classes():
    """Classes importable only while saving, as pytorch-lightning's are on the author's machine.
    Yields (ModelCheckpoint, AttributeDict); the modules are removed afterwards."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks",
             "pytorch_lightning.callbacks.model_checkpoint", "pytorch_lightning.utilities",
             "pytorch_lightning.utilities.parsing"]
    mods = {n: types.ModuleType(n) for n in names}

    class ModelCheckpoint:
        pass

    class AttributeDict(dict):
        pass

    for cls, module in ((ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint"),
                        (AttributeDict, "pytorch_lightning.utilities.parsing")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
    mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = ModelCheckpoint
    mods["pytorch_lightning.utilities.parsing"].AttributeDict = AttributeDict
    return mods, ModelCheckpoint, AttributeDict


def save_lightning_style(path, state_dict, config):
    """A checkpoint in the released METER format (pytorch-lightning 1.3.2 layout)."""
    mods, model_checkpoint, attribute_dict = fake_lightning_classes()
    sys.modules.update(mods)
    try:
        torch.save({"epoch": 9, "global_step": 1234, "pytorch-lightning_version": "1.3.2",
                    "state_dict": state_dict, "hparams_name": "kwargs",
                    "hyper_parameters": attribute_dict(config=dict(config)),
                    "callbacks": {model_checkpoint: {"monitor": "val/the_metric",
                                                     "best_model_score": torch.tensor(0.75)}},
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5}]}],
                    "lr_schedulers": [{"last_epoch": 3}]}, path)
    finally:
        for name in mods:
            sys.modules.pop(name, None)


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
