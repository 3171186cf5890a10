"""Stage 3: models and their artificial neurons.

:data:`REGISTRY` maps a model name to a loader; :func:`extract` runs stimuli through a model
and returns the pooled activation of every AN of every selected layer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bids_vlm.config import ModelConfig
from bids_vlm.models import hfclip, openclip
from bids_vlm.models.base import (
    an_id,
    query_key_product,
    recording,
    resolve_device,
    to_numpy,
)
from bids_vlm.progress import progress as progress_bar

LOGGER = logging.getLogger("bids_vlm.models")

@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its loader, a description, and {stream: (layers, ANs per layer)}."""

    loader: Callable
    description: str
    streams: dict


_TINY = openclip.TINY_CONFIG
REGISTRY: dict[str, ModelEntry] = {
    "tiny-clip": ModelEntry(
        lambda cfg: openclip.build_tiny_clip(cfg.seed),
        "open_clip CLIP, tiny config, seeded random weights: pipeline tests and the offline "
        "demo only, not a scientific model",
        {"image": (_TINY["vision_cfg"]["layers"], 4 * _TINY["vision_cfg"]["width"]),
         "text": (_TINY["text_cfg"]["layers"], 4 * _TINY["text_cfg"]["width"])}),
    "clip-vit-b-32": ModelEntry(
        lambda cfg: openclip.load_openai_clip("clip-vit-b-32", cfg.model_dir),
        "OpenAI CLIP ViT-B/32 (open_clip 'openai' weights, from a local file)",
        {"image": (12, 3072), "text": (12, 2048)}),
    "clip-vit-b-16": ModelEntry(
        lambda cfg: openclip.load_openai_clip("clip-vit-b-16", cfg.model_dir),
        "OpenAI CLIP ViT-B/16 (open_clip 'openai' weights, from a local file)",
        {"image": (12, 3072), "text": (12, 2048)}),
}


def is_model_name(name: str) -> bool:
    """A registered name, or ``hf-clip:<directory or hub id>``."""
    return name in REGISTRY or (name.startswith(hfclip.PREFIX) and len(name) > len(hfclip.PREFIX))


def describe_models() -> str:
    """The ``--list-models`` text: each model with its streams, layers and ANs per layer."""
    lines = [f"{hfclip.PREFIX}<directory or hub id>: a Hugging Face transformers CLIPModel "
             "from a local directory or the local Hugging Face cache (image and text streams; "
             "layers and ANs from its config)"]
    for name, entry in REGISTRY.items():
        lines.append(f"{name}: {entry.description}")
        for stream, (layers, units) in entry.streams.items():
            lines.append(f"    {stream}: {layers} layers x {units} ANs (ffn) = "
                         f"{layers * units} ANs")
    return "\n".join(lines)


def check_selection(models, streams, layers):
    """Raise ValueError when the --streams / --layers selection matches nothing in a model."""
    for name in (m for m in models if m in REGISTRY):  # hf-clip: sizes known once loaded
        entry = REGISTRY[name]
        chosen = [s for s in entry.streams if not streams or s in streams]
        if not chosen:
            raise ValueError(f"--streams {' '.join(streams)} matches no stream of {name} "
                             f"({', '.join(entry.streams)})")
        if layers and not any(select_layers(entry.streams[s][0], layers) for s in chosen):
            raise ValueError(f"--layers {' '.join(map(str, layers))} matches no layer of {name} "
                             f"(layers 0-{max(entry.streams[s][0] for s in chosen) - 1})")


def load_model(name: str, config: ModelConfig):
    """Load a registered model on the CPU, in eval mode."""
    if name.startswith(hfclip.PREFIX):
        return hfclip.load_hf_clip(name)
    if name not in REGISTRY:
        raise KeyError(f"unknown model '{name}' (known: {', '.join(REGISTRY)})")
    return REGISTRY[name].loader(config)


def select_layers(n_layers: int, layers: tuple) -> list[int]:
    """Layer indices to record: all when ``layers`` is empty, else those that exist."""
    return list(range(n_layers)) if not layers else [i for i in layers if 0 <= i < n_layers]


def extract(model, items_by_stream: dict, config: ModelConfig, progress=True) -> dict:
    """Pooled AN activations for every stimulus.

    items_by_stream: {stream: list of n_items stimuli (image paths or texts)}.
    Returns {"<stream>/<layer:02d>": (n_items, units) float32}; streams with no items are left out.
    """
    device = resolve_device(config.device)
    model.module.to(device)
    out = {}
    for stream, items in items_by_stream.items():
        if not items:
            continue
        layers = select_layers(model.streams[stream].n_layers, config.layers)
        chunks = {layer: [] for layer in layers}
        for start in progress_bar(range(0, len(items), config.batch_size), progress,
                          desc=f"{model.name} {stream}", unit="batch"):
            batch = items[start:start + config.batch_size]
            for layer, acts in _run_batch(model, stream, batch, layers, config, device).items():
                chunks[layer].append(acts)
        for layer in layers:
            out[f"{stream}/{layer:02d}"] = np.concatenate(chunks[layer], axis=0)
    model.module.to("cpu")
    return out


def extract_cached(model, items_by_stream: dict, config: ModelConfig, cache_root,
                   progress=True) -> tuple[dict, int]:
    """:func:`extract` through the on-disk :class:`~bids_vlm.models.cache.ActivationCache`.

    Returns (activations as :func:`extract` gives them, number of stimuli computed now).
    """
    from bids_vlm.models.cache import ActivationCache, settings_key, weights_digest

    cache = ActivationCache(cache_root, settings_key(model.name, weights_digest(model.module),
                                                     config))
    out, computed = {}, 0
    for stream, items in items_by_stream.items():
        if not items:
            continue
        found, missing = cache.load(stream, items)
        if missing:
            fresh = extract(model, {stream: missing}, config, progress=progress)
            cache.save(stream, missing, fresh)
            found.update({item: {k: v[i] for k, v in fresh.items()}
                          for i, item in enumerate(missing)})
            computed += len(missing)
        for key in found[items[0]]:
            out[key] = np.stack([found[item][key] for item in items])
    return out, computed


def _run_batch(model, stream, batch, layers, config, device) -> dict:
    inputs, valid, cls_index = model.prepare(stream, batch, device)
    modules = {i: m for i, m in model.layer_modules(stream, config.an_kind).items()
               if i in layers}
    transform = query_key_product if config.an_kind == "attn" else None
    with torch.inference_mode(), _autocast(device, config.precision), \
            recording(modules, valid, cls_index, config.pooling, model.batch_first(stream),
                      transform) as pooled:
        model.forward(stream, inputs)
    return to_numpy(pooled)


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast(device, precision):
    """fp32: no change; fp16 / bf16: CUDA autocast (weights stay fp32, matrix products in half
    precision). Half precision on the CPU is refused."""
    import contextlib

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ValueError(f"--precision {precision} needs a CUDA device (--device cuda)")
    return torch.autocast("cuda", dtype=PRECISIONS[precision])


def an_ids(model_name: str, key: str, units: int, kind: str = "ffn") -> list[str]:
    """AN ids of one ``stream/layer`` block of ``units`` units."""
    stream, layer = key.split("/")
    return [an_id(model_name, stream, int(layer), u, kind) for u in range(units)]
