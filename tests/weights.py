"""Checkpoints the tests write: code-running payloads in every form a checkpoint file can take
(and :func:`prove_payloads_live`, which shows they run when loaded without the checks), a
pytorch-lightning-style checkpoint, METER's released layout and a tiny transformers CLIP."""
from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import types
import warnings
from collections import OrderedDict
from typing import List, Tuple

import torch

from bids_vlm.models.checkpoint import _pickle_module
from bids_vlm.models.meter import NAME, TINY_TOKENIZER


class _MakeDir:
    """Unpickling this calls os.mkdir(path): code run by loading the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


class Call:
    """Unpickling this calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def pickle_payloads(marker) -> dict:
    """{what it calls: an object whose unpickling creates ``marker``}."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {"system": Call(os.system, f"touch {shlex.quote(str(marker))}"),
            "subprocess.call": Call(subprocess.call, [sys.executable, "-c", code]),
            "builtins.exec": Call(exec, code),
            "builtins.eval": Call(eval, code),
            "mkdir": _MakeDir(marker)}


def write_pickle_payload(path, payload, form):
    """``payload`` inside a checkpoint dict saved by torch.save (zip or legacy format), or
    pickled alone."""
    data = {"state_dict": OrderedDict(w=torch.zeros(2)), "extra": payload}
    if form == "torch zip":
        torch.save(data, path)
    elif form == "legacy torch.save":
        torch.save(data, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


class ScriptedWriter(torch.nn.Module):
    """A TorchScript payload: ``torch.jit.load`` calls its ``__setstate__``, which maps
    ``target`` with ``torch.from_file(shared=True)`` (creating the file) and writes ``content``
    into it."""

    def __init__(self, target: str, content: List[int]):
        super().__init__()
        self.target = target
        self.content = content
        self.mapped = torch.zeros(0, dtype=torch.uint8)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, List[int], bool]:
        return (self.target, self.content, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, List[int], bool]):
        self.target = state[0]
        self.content = state[1]
        self.training = state[2]
        self.mapped = torch.from_file(self.target, shared=True, size=len(self.content),
                                      dtype=torch.uint8)
        self.mapped.copy_(torch.tensor(self.content, dtype=torch.uint8))


def save_torchscript_payload(path, target, content=b"written while loading\n"):
    """A TorchScript archive at ``path`` that writes ``content`` to ``target`` when loaded."""
    with warnings.catch_warnings():  # torch.jit is deprecated, and says so
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(ScriptedWriter(str(target), list(content))), str(path))
    return path


def pth_line(marker) -> bytes:
    """A ``.pth`` line that Python's ``site`` runs at start-up: it creates ``marker``."""
    return f"import os; open({str(marker)!r}, 'w').close()\n".encode()


def save_pth_payload(path, site_dir, marker):
    """A TorchScript archive at ``path`` that writes ``<site_dir>/evil.pth`` (creating
    ``marker`` at the next start of Python) when loaded."""
    return save_torchscript_payload(path, site_dir / "evil.pth", pth_line(marker))


def write_payload(path, payload, site_dir, marker):
    """At ``path``: the ``payload`` kind ("torchscript", "pth" or a pickle calling exec) that
    would create ``marker`` (or ``<site_dir>/evil.pth``) if it ran."""
    if payload == "torchscript":
        return save_torchscript_payload(path, marker)
    if payload == "pth":
        return save_pth_payload(path, site_dir, marker)
    return write_pickle_payload(path, pickle_payloads(marker)["builtins.exec"], "torch zip")


def prove_payloads_live(guard):
    """The payloads do what they are built for when loaded without the checks: the TorchScript
    archive writes its file through ``torch.load(..., pickle_module=...)`` (the loader before
    this fix), the ``.pth`` it writes runs code in the next Python, and every pickle payload
    runs."""
    path = save_torchscript_payload(guard / "x.ckpt", guard / "marker", b"ran\n")
    site_dir = guard / "site-packages"
    site_dir.mkdir()
    with warnings.catch_warnings():  # "dispatching to torch.jit.load", and its deprecation
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module())
        torch.jit.load(str(save_pth_payload(guard / "pth.ckpt", site_dir, guard / "pth-ran")))
    assert (guard / "marker").read_bytes() == b"ran\n"
    assert (site_dir / "evil.pth").is_file() and not (guard / "pth-ran").exists()
    subprocess.run([sys.executable, "-S", "-c", "import site, sys; site.addsitedir(sys.argv[1])",
                    str(site_dir)], check=True, timeout=60)
    assert (guard / "pth-ran").is_file()
    for i, payload in enumerate(pickle_payloads(guard / "pickle").values()):
        pickle.loads(pickle.dumps(payload))
        assert (guard / "pickle").exists(), i
        (guard / "pickle").unlink() if (guard / "pickle").is_file() else (guard / "pickle").rmdir()
    return guard


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


def write_released_checkpoint(folder, model, config=None, position_ids=True):
    """``model``'s weights as an official METER checkpoint, with the RoBERTa tokenizer next to
    it, in the layout bids_vlm looks for: <folder>/meter-clip16-roberta/{*.ckpt, roberta-base}."""
    target = folder / NAME
    target.mkdir(parents=True)
    state = dict(model.module.state_dict())
    if position_ids:  # the buffer transformers 4.6.0 saved
        state["text_transformer.embeddings.position_ids"] = torch.arange(
            model.module.arch.text_positions)[None]
    save_lightning_style(target / "meter_clip16_288_roberta_pretrain.ckpt", state,
                         config or {"num_heads": model.module.arch.cross_heads,
                                    "max_text_len": 40, "vit": "ViT-B/16"})
    shutil.copytree(TINY_TOKENIZER, target / "roberta-base")
    return target


def write_tokenizer(folder):
    """vocab.json + merges.txt of OpenAI CLIP's BPE, from the copy open_clip ships."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): i for token, i in simple.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


def write_tiny_hf_clip(folder, hidden=64, layers=3):
    """A random-weight transformers CLIPModel (``hidden`` wide, ``layers`` per tower, FFN
    2 x hidden) saved in ``folder`` with its image processor and tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tower = {"hidden_size": hidden, "intermediate_size": 2 * hidden,
             "num_hidden_layers": layers, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "max_position_embeddings": 77, **tower},
        vision_config={"image_size": 32, "patch_size": 8, **tower}, projection_dim=hidden // 2)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(folder)
    write_tokenizer(folder)
    return folder
