"""On-disk cache of AN activations, one file per stimulus.

The cache folder of a model run is keyed by a hash of the model's weights and of every setting
that changes activations (model name, pooling, layers, batch-independent settings); inside it,
each stimulus is a ``<hash of its content>.npz`` (image bytes, or the text), holding the pooled
ANs of every recorded layer. Files are written under a temporary name and renamed, so parallel
runs (several participants sharing stimuli) never read a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from bids_vlm.inputs.stimuli import PAIR_PREFIX, split_pair_item
from bids_vlm.inputs.video import file_digest, is_frame_item, split_frame_item

LOGGER = logging.getLogger("bids_vlm.cache")


def weights_digest(module) -> str:
    """SHA-256 of a module's state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def settings_key(model_name: str, weights: str, config) -> str:
    """Hash of everything that changes the activations of a stimulus."""
    settings = {"model": model_name, "weights": weights, "pooling": config.pooling,
                "layers": list(config.layers), "kind": config.an_kind, "precision": config.precision, "format": 2}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def stimulus_key(stream: str, item: str) -> str:
    """Hash of a stimulus's content: the image file's bytes, or the text."""
    digest = hashlib.sha256(stream.encode() + b"\0")
    if item.startswith(PAIR_PREFIX):
        image, text = split_pair_item(item)
        digest.update(b"pair\0" + (_image_digest(image).encode() if image else b"-") + b"\0")
        digest.update(b"-" if text is None else b"+" + text.encode("utf-8"))
    elif stream == "image":
        digest.update(_image_digest(item).encode())
    else:
        digest.update(item.encode("utf-8"))
    return digest.hexdigest()[:32]


def _image_digest(item) -> str:
    """Digest of an image file's bytes, or of a video file and the frame's time."""
    if is_frame_item(item):
        path, seconds = split_frame_item(item)
        return f"{file_digest(path)}@{seconds:.4f}"
    return hashlib.sha256(Path(item).read_bytes()).hexdigest()


class ActivationCache:
    """Per-stimulus activation files under ``root/<settings key>/``."""

    def __init__(self, root, key: str):
        self.folder = Path(root) / key
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, stream, item) -> Path:
        return self.folder / f"{stimulus_key(stream, item)}.npz"

    def load(self, stream, items) -> tuple[dict, list]:
        """({item: {layer key: (width,)}} found, [items not cached]); unreadable files count as
        missing (removed with a warning, and recomputed)."""
        found, missing = {}, []
        for item in items:
            path = self._path(stream, item)
            if not path.is_file():
                missing.append(item)
                continue
            try:
                with np.load(path) as data:
                    found[item] = {k.replace("__", "/"): data[k] for k in data.files}
            except Exception as exc:  # truncated or garbled: zipfile, OSError, ValueError...
                LOGGER.warning("%s: corrupted activation cache file (%s: %s); removed, the "
                               "stimulus is recomputed", path, type(exc).__name__, exc)
                path.unlink(missing_ok=True)
                missing.append(item)
        return found, missing

    def save(self, stream, items, acts: dict):
        """acts: {layer key: (n_items, width)} for ``items`` of ``stream``."""
        for i, item in enumerate(items):
            path = self._path(stream, item)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp.npz")
            os.close(fd)
            np.savez(tmp, **{k.replace("/", "__"): v[i] for k, v in acts.items()
                             if k.startswith(f"{stream}/")})
            os.replace(tmp, path)
