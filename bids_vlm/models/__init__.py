"""Stage 3: models and their artificial neurons.

:data:`REGISTRY` maps a model name to a loader; :func:`extract` runs stimuli through a model
and returns the pooled activation of every AN of every selected layer.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

import h5py
import numpy as np
import torch

from bids_vlm.config import ModelConfig
from bids_vlm.inputs.stimuli import unique_items
from bids_vlm.models import hfclip, meter, openclip
from bids_vlm.models.cache import ActivationCache, settings_key, weights_digest
from bids_vlm.models.base import (ModelAdapter, query_key_product, recording, resolve_device,
                                  to_numpy)
from bids_vlm.names import an_id
from bids_vlm.progress import progress as progress_bar

LOGGER = logging.getLogger("bids_vlm.models")

@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its loader, a description, and {stream: (layers, ANs per layer)}."""

    loader: Callable
    description: str
    streams: dict
    random_weights: bool = False  # a test model: its results say nothing about the brain


_TINY = openclip.TINY_CONFIG
REGISTRY: dict[str, ModelEntry] = {
    "tiny-clip": ModelEntry(
        lambda cfg: openclip.build_tiny_clip(cfg.seed),
        "open_clip CLIP, tiny config, seeded random weights: pipeline tests and the offline "
        "demo only, not a scientific model",
        {"image": (_TINY["vision_cfg"]["layers"], 4 * _TINY["vision_cfg"]["width"]),
         "text": (_TINY["text_cfg"]["layers"], 4 * _TINY["text_cfg"]["width"])},
        random_weights=True),
    "clip-vit-b-32": ModelEntry(
        lambda cfg: openclip.load_openai_clip("clip-vit-b-32", cfg.model_dir),
        "OpenAI CLIP ViT-B/32 (open_clip 'openai' weights, from a local file)",
        {"image": (12, 3072), "text": (12, 2048)}),
    "clip-vit-b-16": ModelEntry(
        lambda cfg: openclip.load_openai_clip("clip-vit-b-16", cfg.model_dir),
        "OpenAI CLIP ViT-B/16 (open_clip 'openai' weights, from a local file)",
        {"image": (12, 3072), "text": (12, 2048)}),
    meter.NAME: ModelEntry(
        lambda cfg: meter.load_meter(cfg.model_dir, cfg.image_size),
        "METER CLIP-ViT-B/16 + RoBERTa-base + 6 co-attention layers (an official checkpoint, "
        "pretrain or fine-tuned, from a local file; RoBERTa tokenizer from a local folder)",
        {"image": (11, 3072), "text": (12, 3072), "cross-image": (6, 3072),
         "cross-text": (6, 3072)}),
    "tiny-meter": ModelEntry(
        lambda cfg: meter.build_tiny_meter(cfg.seed),
        "METER, tiny config, seeded random weights: pipeline tests only, not a scientific model",
        {s: (n, u) for s, n, u in (("image", meter.TINY_ARCH.vit_layers, meter.TINY_ARCH.vit_ffn),
                                   ("text", meter.TINY_ARCH.text_layers, meter.TINY_ARCH.text_ffn),
                                   ("cross-image", meter.TINY_ARCH.cross_layers,
                                    meter.TINY_ARCH.cross_ffn),
                                   ("cross-text", meter.TINY_ARCH.cross_layers,
                                    meter.TINY_ARCH.cross_ffn))},
        random_weights=True),
}
DEFAULT_MODELS_ENV = "BIDS_VLM_DEFAULT_MODELS"  # set by the image to the models it baked


def default_models() -> list[str]:
    """The default of --models: ``$BIDS_VLM_DEFAULT_MODELS`` (space-separated; the Dockerfile
    sets it to the models it baked), else the random-weight ``tiny-clip``."""
    return os.environ.get(DEFAULT_MODELS_ENV, "").split() or ["tiny-clip"]


def random_weight_models(models) -> list[str]:
    """The test models among ``models`` (seeded random weights, not scientific models)."""
    return [m for m in models if m in REGISTRY and REGISTRY[m].random_weights]


def random_weights_warning(models) -> str:
    """One sentence on the random-weight models among ``models``, or ""."""
    found = random_weight_models(models)
    if not found:
        return ""
    return (f"{' and '.join(found)} {'has' if len(found) == 1 else 'have'} seeded random "
            "weights: a test model for checking the pipeline, whose results say nothing about "
            "the brain (choose a real model with --models; bids_vlm --list-models)")


def is_model_name(name: str) -> bool:
    """A registered name, ``hf-clip:<directory or hub id>`` or
    ``open_clip:<architecture>:<pretrained tag or checkpoint file>``."""
    for prefix in (hfclip.PREFIX, openclip.PREFIX):
        if name.startswith(prefix) and len(name) > len(prefix):
            return True
    return name in REGISTRY


def describe_models() -> str:
    """The ``--list-models`` text: each model with its streams, layers and ANs per layer."""
    lines = [f"{hfclip.PREFIX}<directory or hub id>: a Hugging Face transformers CLIPModel "
             "from a local directory or the local Hugging Face cache (image and text streams; "
             "layers and ANs from its config)",
             f"{openclip.PREFIX}<architecture>:<pretrained tag or checkpoint file>: any open_clip "
             "ViT CLIP, e.g. open_clip:ViT-B-16:laion2b_s34b_b88k, weights from --model-dir "
             "(<architecture>-<tag>/), the Hugging Face cache or the file (image and text "
             "streams; layers and ANs from the architecture)"]
    for name, entry in REGISTRY.items():
        lines.append(f"{name}: {entry.description}")
        for stream, (layers, width) in entry.streams.items():
            lines.append(f"    {stream}: {layers} layers x {width} ANs (ffn) = "
                         f"{layers * width} ANs")
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


def load_model(name: str, config: ModelConfig) -> ModelAdapter:
    """Load a registered model (or a spec) on the CPU, in eval mode."""
    if name.startswith(hfclip.PREFIX):
        return hfclip.load_hf_clip(name)
    if name.startswith(openclip.PREFIX):
        return openclip.load_generic(name, config.model_dir)
    if name not in REGISTRY:
        raise KeyError(f"unknown model '{name}' (known: {', '.join(REGISTRY)})")
    return REGISTRY[name].loader(config)


def select_layers(n_layers: int, layers: tuple) -> list[int]:
    """Layer indices to record: all when ``layers`` is empty, else those that exist."""
    return list(range(n_layers)) if not layers else [i for i in layers if 0 <= i < n_layers]


def extract(model: ModelAdapter, items_by_stream: dict, config: ModelConfig, progress=True,
            device="auto", batch_size=16) -> dict:
    """Pooled AN activations for every stimulus, ``batch_size`` at a time on ``device``
    ("auto": CUDA when present).

    items_by_stream: {stream: list of n_items stimuli (image paths, texts or pair items)}.
    Streams a model computes in one forward pass (METER's two cross streams, on the same items)
    are recorded together. Returns {"<stream>/<layer:02d>": (n_items, width) float32}; streams
    with no items are left out.
    """
    device = resolve_device(device)
    model.module.to(device)
    out = {}
    for streams in _forward_groups(model, items_by_stream):
        items = items_by_stream[streams[0]]
        layers = {s: select_layers(model.streams[s].n_layers, config.layers) for s in streams}
        chunks = {(s, layer): [] for s in streams for layer in layers[s]}
        batches = _prepared_batches(model, streams, items, batch_size, device)
        for prepared in progress_bar(batches, progress, total=-(-len(items) // batch_size),
                                     desc=f"{model.name} {'+'.join(streams)}", unit="batch"):
            for stream, acts in _run_batch(model, streams, prepared, layers, config,
                                           device).items():
                for layer, values in acts.items():
                    chunks[(stream, layer)].append(values)
        for (stream, layer), parts in chunks.items():
            out[f"{stream}/{layer:02d}"] = np.concatenate(parts, axis=0)
    model.module.to("cpu")
    return out


def _forward_groups(model, items_by_stream) -> list[list[str]]:
    """Streams with items, grouped when the model records them in one forward pass over the
    same items (``model.forward_key``)."""
    key_of = model.forward_key
    groups: dict = {}
    for stream, items in items_by_stream.items():
        if items:
            groups.setdefault((key_of(stream), tuple(items)), []).append(stream)
    return list(groups.values())


def extract_cached(model: ModelAdapter, items_by_stream: dict, config: ModelConfig, cache_root,
                   progress=True, device="auto", batch_size=16) -> tuple[dict, int]:
    """:func:`extract` through the on-disk :class:`~bids_vlm.models.cache.ActivationCache`
    (device and batch_size: how the missing stimuli are run, as there).

    Returns (activations as :func:`extract` gives them, number of (stream, stimulus) pairs
    computed now).
    """
    cache = ActivationCache(cache_root, settings_key(model.name, weights_digest(model.module),
                                                     config))
    streams = [s for s, items in items_by_stream.items() if items]
    loaded = {s: cache.load(s, items_by_stream[s]) for s in streams}
    missing = {s: loaded[s][1] for s in streams if loaded[s][1]}
    fresh = extract(model, missing, config, progress=progress, device=device,
                    batch_size=batch_size) if missing else {}
    out = {}
    for stream in streams:
        found = loaded[stream][0]
        if stream in missing:
            mine = {k: v for k, v in fresh.items() if k.split("/")[0] == stream}
            cache.save(stream, missing[stream], mine)
            found.update({item: {k: v[i] for k, v in mine.items()}
                          for i, item in enumerate(missing[stream])})
        items = items_by_stream[stream]
        for key in found[items[0]]:
            out[key] = np.stack([found[item][key] for item in items])
    return out, sum(len(v) for v in missing.values())


def _prepared_batches(model, streams, items, batch_size, device):
    """Yields ``{stream: model.prepare(stream, batch, device)}`` for each batch of ``items``,
    preparing (decoding, loading, resizing, tokenizing) the next batch in a background thread
    while the caller runs the current one through the model."""
    starts = range(0, len(items), batch_size)

    def prepare(start):
        batch = items[start:start + batch_size]
        return {stream: model.prepare(stream, batch, device) for stream in streams}

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prepare") as pool:
        future = pool.submit(prepare, starts[0]) if len(starts) else None
        for k in range(len(starts)):
            prepared = future.result()
            if k + 1 < len(starts):
                future = pool.submit(prepare, starts[k + 1])
            yield prepared


def _run_batch(model, streams, prepared, layers, config, device) -> dict:
    """{stream: {layer: (B, width)}} of one batch (``prepared`` by :func:`_prepared_batches`),
    all ``streams`` in one forward pass."""
    transform = query_key_product if config.an_kind == "attn" else None
    pooled, inputs = {}, None
    with contextlib.ExitStack() as stack, torch.inference_mode(), \
            _autocast(device, config.precision):
        for stream in streams:
            stream_inputs, valid, cls_index = prepared[stream]
            inputs = stream_inputs if inputs is None else inputs
            modules = {i: m for i, m in model.layer_modules(stream, config.an_kind).items()
                       if i in layers[stream]}
            pooled[stream] = stack.enter_context(recording(
                modules, valid, cls_index, config.pooling, model.batch_first(stream), transform))
        model.forward(streams[0], inputs)
    return {stream: to_numpy(values) for stream, values in pooled.items()}


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast(device, precision):
    """fp32: no change; fp16 / bf16: CUDA autocast (weights stay fp32, matrix products in half
    precision). Half precision on the CPU is refused."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ValueError(f"--precision {precision} needs a CUDA device (--device cuda)")
    return torch.autocast("cuda", dtype=PRECISIONS[precision])


def an_ids(model_name: str, key: str, width: int, kind: str = "ffn") -> list[str]:
    """AN ids of one ``stream/layer`` block of ``width`` ANs."""
    stream, layer = key.split("/")
    return [an_id(model_name, stream, int(layer), u, kind) for u in range(width)]


def write_activations(timelines, model_name: str, config, cache_dir, path, device="auto",
                      batch_size=16) -> str:
    """AN activations of every unique stimulus of the ``timelines``
    (:class:`~bids_vlm.inputs.stimuli.Timeline`) -> ``path`` (HDF5), through the activation
    cache in ``cache_dir`` (stimuli already there are not run through the model again).
    Datasets ``<stream>/<layer>`` (n_items, width) and ``items/<stream>`` (n_items,) strings;
    attributes: the model, how many stimuli were computed now, width and layers per stream.
    config: the AnalysisConfig; device and batch_size: how the model runs."""
    model = load_model(model_name, config.model)
    items = {s: unique_items(timelines, s) for s in model.streams
             if not config.model.streams or s in config.model.streams}
    acts, computed = extract_cached(model, items, config.model, cache_dir, device=device,
                                    batch_size=batch_size)
    with h5py.File(path, "w") as h5:
        for key, value in acts.items():
            h5[key] = value
        for stream, values in items.items():
            h5.create_dataset(f"items/{stream}", data=values, dtype=h5py.string_dtype())
        h5.attrs["model"] = model_name
        h5.attrs["computed"] = computed
        h5.attrs["width"] = json.dumps({s: v.width for s, v in model.streams.items()})
        h5.attrs["n_layers"] = json.dumps({s: v.n_layers for s, v in model.streams.items()})
    return str(path)
