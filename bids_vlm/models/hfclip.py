"""CLIP models from Hugging Face transformers (``CLIPModel``), from a local directory or a hub
id already in the local Hugging Face cache (never downloaded at run time).

Model names: ``hf-clip:<directory or hub id>``, e.g. ``hf-clip:/models/clip-vit-base-patch32``
or ``hf-clip:openai/clip-vit-base-patch32``. ANs: ``vision_model.encoder.layers.i.mlp.
activation_fn`` (image) and ``text_model.encoder.layers.i.mlp.activation_fn`` (text), [B, L, U];
attn ANs from each layer's ``self_attn`` q_proj and k_proj. Text ANs are pooled over the tokens
of the attention mask; ``cls`` pooling takes CLS for images and the last (EOS) token for text.
The folder's PyTorch weight files are checked before transformers reads them
(:func:`check_weight_files`), and no code from the folder is trusted (``trust_remote_code``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bids_vlm.errors import DataError, UnsafeCheckpointError, WeightsNotFoundError
from bids_vlm.models.base import StreamSpec, load_image
from bids_vlm.models.checkpoint import vet_checkpoint
from bids_vlm.inputs.video import FrameSource, is_frame_item

PREFIX = "hf-clip:"


def resolve(source: str) -> Path:
    """A local model directory: ``source`` itself, or the cached snapshot of a hub id."""
    path = Path(source).expanduser()
    if (path / "config.json").is_file():
        return path
    from huggingface_hub import snapshot_download  # only when looking for downloaded weights

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises several types when not cached
        raise WeightsNotFoundError(
            f"Hugging Face CLIP '{source}' is neither a local directory with config.json nor "
            f"a hub id in the local Hugging Face cache, and bids_vlm does not download at run "
            f"time. Save it once on a machine with internet (CLIPModel.from_pretrained(...)."
            f"save_pretrained(DIR), and the same for CLIPProcessor) and pass "
            f"--models hf-clip:DIR") from exc


class HFClipModel:
    """A transformers ``CLIPModel`` with its processor, exposing ``image`` and ``text``."""

    def __init__(self, name, module, image_processor, tokenizer):
        self.name = name
        self.module = module.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.frames = FrameSource()
        self.streams = {
            "image": StreamSpec("image", len(self._layers("image")),
                                module.config.vision_config.intermediate_size),
            "text": StreamSpec("text", len(self._layers("text")),
                               module.config.text_config.intermediate_size),
        }

    def _layers(self, stream):
        tower = self.module.vision_model if stream == "image" else self.module.text_model
        return tower.encoder.layers

    def layer_modules(self, stream, kind="ffn") -> dict:
        if kind == "attn":
            return {i: layer.self_attn for i, layer in enumerate(self._layers(stream))}
        return {i: layer.mlp.activation_fn for i, layer in enumerate(self._layers(stream))}

    def batch_first(self, stream) -> bool:
        return True

    def prepare(self, stream, items, device):
        if stream == "image":
            images = [self.frames.image(i) if is_frame_item(i) else load_image(i) for i in items]
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            n_tokens = self.module.vision_model.embeddings.position_embedding.weight.shape[0]
            valid = torch.ones(len(items), n_tokens, dtype=torch.bool, device=device)
            return pixels.to(device), valid, torch.zeros(len(items), dtype=torch.long,
                                                         device=device)
        enc = self.tokenizer(list(items), padding=True, truncation=True,
                             max_length=self.module.config.text_config.max_position_embeddings,
                             return_tensors="pt")
        valid = enc["attention_mask"].bool().to(device)
        last = valid.sum(1) - 1
        return {k: v.to(device) for k, v in enc.items()}, valid, last

    @staticmethod
    def forward_key(stream) -> str:
        """Each tower is run on its own."""
        return stream

    def forward(self, stream, inputs):
        if stream == "image":
            return self.module.get_image_features(pixel_values=inputs)
        return self.module.get_text_features(**inputs)


def check_weight_files(folder: Path) -> None:
    """Refuse the folder before transformers reads it when a PyTorch file it would load
    (``pytorch_model.bin``, and every shard that ``pytorch_model.bin.index.json`` names, in any
    subfolder) would run code (a TorchScript archive, a pickle that calls code):
    :class:`~bids_vlm.errors.UnsafeCheckpointError` (exit 64) names the file; a shard named
    outside the folder is refused too. transformers reads them with ``weights_only=True``;
    this is the clear error and a second check. Only the pickles are read (tensors on the meta
    device), not the weights; files transformers never loads (``training_args.bin``) are left."""
    for path in _torch_weight_files(folder):
        vet_checkpoint(path)


def _torch_weight_files(folder: Path) -> list[Path]:
    found = [folder / "pytorch_model.bin"]
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"cannot read the shard index: {exc}", index) from exc
        for name in sorted(shards):
            path = (folder / str(name)).resolve()
            if folder.resolve() not in path.parents:
                raise UnsafeCheckpointError(f"the shard index names '{name}', outside the "
                                            "model folder; it was refused", index)
            found.append(path)
    return [p for p in found if p.is_file()]


def load_hf_clip(name: str) -> HFClipModel:
    """Load ``hf-clip:<directory or hub id>`` from local files only."""
    # local import: transformers takes seconds to import; only for its models
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    folder = resolve(name[len(PREFIX):])
    check_weight_files(folder)
    local = {"local_files_only": True, "trust_remote_code": False}
    try:
        module = CLIPModel.from_pretrained(folder, **local)
        processor = CLIPImageProcessor.from_pretrained(folder, **local)
        tokenizer = AutoTokenizer.from_pretrained(folder, **local)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"cannot load a CLIP model, image processor and tokenizer "
                                   f"from {folder}: {exc}") from exc
    return HFClipModel(name, module, processor, tokenizer)
