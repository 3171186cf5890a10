"""CLIP models from open_clip: the tiny random-weight test model and real checkpoints.

``tiny-clip`` is an open_clip CLIP built from a small config with seeded random weights. It runs
the same code as real CLIP and exists to test the pipeline and run the offline demo; its
"neurons" mean nothing about the brain. ``clip-vit-b-32`` / ``clip-vit-b-16`` are the OpenAI
weights in open_clip, loaded only from local files (see :func:`find_weights`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from bids_vlm.errors import DataError, WeightsNotFoundError
from bids_vlm.models.base import StreamSpec, load_image
from bids_vlm.models.checkpoint import TORCH_FORMATS, checkpoint_format, vet_checkpoint
from bids_vlm.inputs.video import FrameSource, is_frame_item

TINY_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 4, "head_width": 32,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 4, "mlp_ratio": 4.0},
}
# short name -> (open_clip architecture, pretrained tag)
OPENAI = {"clip-vit-b-32": ("ViT-B-32", "openai"), "clip-vit-b-16": ("ViT-B-16", "openai")}
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenClipModel:
    """An open_clip CLIP with its preprocessing, exposing ``image`` and ``text`` streams.

    Images and texts are encoded by their own tower (``encode_image`` / ``encode_text``), never
    with a dummy partner input.
    """

    def __init__(self, name, module, preprocess, tokenizer):
        self.name = name
        self.module = module.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.frames = FrameSource()
        self.streams = {
            "image": self._spec("image", module.visual.transformer),
            "text": self._spec("text", module.transformer),
        }

    @staticmethod
    def _spec(stream, transformer):
        blocks = transformer.resblocks
        return StreamSpec(stream, len(blocks), blocks[0].mlp.c_fc.out_features)

    def layer_modules(self, stream, kind="ffn") -> dict:
        """{layer index: the module whose call gives the ANs}: the FFN activation (``ffn``, its
        output), or the attention (``attn``, q * k from its inputs)."""
        tower = self.module.visual.transformer if stream == "image" else self.module.transformer
        if kind == "attn":
            return {i: block.attn for i, block in enumerate(tower.resblocks)}
        return {i: block.mlp.gelu for i, block in enumerate(tower.resblocks)}

    def batch_first(self, stream) -> bool:
        tower = self.module.visual.transformer if stream == "image" else self.module.transformer
        return getattr(tower, "batch_first", True)

    def prepare(self, stream, items, device):
        """Model inputs for a batch, with (B, L) valid-token mask and (B,) pooled-token index."""
        if stream == "image":
            pixels = torch.stack([self.preprocess(self._image(p)) for p in items]).to(device)
            n_tokens = self.module.visual.positional_embedding.shape[0]
            valid = torch.ones(len(items), n_tokens, dtype=torch.bool, device=device)
            return pixels, valid, torch.zeros(len(items), dtype=torch.long, device=device)
        tokens = self.tokenizer(list(items)).to(device)
        eot = tokens.argmax(dim=-1)  # open_clip's EOT token has the largest id
        positions = torch.arange(tokens.shape[1], device=device)
        return tokens, positions[None, :] <= eot[:, None], eot

    def _image(self, item):
        return self.frames.image(item) if is_frame_item(item) else load_image(item)

    @staticmethod
    def forward_key(stream) -> str:
        """Each tower is run on its own."""
        return stream

    def forward(self, stream, inputs):
        if stream == "image":
            return self.module.encode_image(inputs)
        return self.module.encode_text(inputs)


def build_tiny_clip(seed: int = 0) -> OpenClipModel:
    """The tiny random-weight CLIP (4 + 4 layers, 256 ANs per layer), seeded."""
    import open_clip  # open_clip takes seconds to import; only for its models

    torch.manual_seed(seed)
    cfg = TINY_CONFIG
    module = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                            text_cfg=cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    return OpenClipModel("tiny-clip", module, preprocess, tokenizer)


def model_dirs(model_dir: str = "") -> list[Path]:
    """Where local weights are looked for: --model-dir, then $BIDS_VLM_MODEL_DIR."""
    dirs = [model_dir, os.environ.get("BIDS_VLM_MODEL_DIR", "")]
    return [Path(d).expanduser() for d in dirs if d]


def find_weights(name: str, model_dir: str = "") -> Path:
    """Local checkpoint of an OpenAI CLIP: ``<model dir>/<name>/open_clip_model.safetensors``
    (or ``open_clip_pytorch_model.bin``), else the Hugging Face cache open_clip fills.
    Raises :class:`WeightsNotFoundError` saying where to put them.
    """
    arch, tag = OPENAI[name]
    repo = _hf_repo(arch, tag)
    found = _local_weights(name, repo, model_dir)
    if found:
        return found
    where = ", ".join(str(d / name) for d in model_dirs(model_dir)) or "(no --model-dir given)"
    raise WeightsNotFoundError(
        f"weights for {name} (open_clip {arch}, pretrained '{tag}') are not on this machine and "
        f"bids_vlm does not download at run time. Looked in: {where} and the Hugging Face cache. "
        f"Put {WEIGHT_FILES[0]} from the Hugging Face repository '{repo}' into "
        f"<model-dir>/{name}/ and pass --model-dir (or set BIDS_VLM_MODEL_DIR), or fill the cache "
        f"once on a machine with internet: python -c \"import open_clip; "
        f"open_clip.create_model('{arch}', pretrained='{tag}')\"")


def _local_weights(folder_name, repo, model_dir):
    """``<model dir>/<folder_name>/<weights file>``, else the Hugging Face cache of ``repo``,
    else None."""
    for folder in model_dirs(model_dir):
        for fname in WEIGHT_FILES:
            if (folder / folder_name / fname).is_file():
                return folder / folder_name / fname
    return _from_hf_cache(repo)


def _hf_repo(arch, tag):
    import open_clip  # open_clip takes seconds to import; only for its models

    return open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "").strip("/")


def _from_hf_cache(repo):
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache  # only when looking for downloaded weights

    for fname in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, fname)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def load_openai_clip(name: str, model_dir: str = "") -> OpenClipModel:
    """A real OpenAI CLIP from local weights (no download)."""
    import open_clip  # open_clip takes seconds to import; only for its models

    arch, tag = OPENAI[name]
    path = find_weights(name, model_dir)
    check_weights_file(path)
    module = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True)
    load_weights(module, path, f"the {name} checkpoint")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    preprocess = open_clip.image_transform(module.visual.image_size, is_train=False,
                                           mean=cfg["mean"], std=cfg["std"])
    return OpenClipModel(name, module, preprocess, open_clip.get_tokenizer(arch))


def check_weights_file(path: Path) -> None:
    """Refuse a weights file that would run code when open_clip reads it
    (:class:`~bids_vlm.errors.UnsafeCheckpointError`, exit 64: a TorchScript archive such as
    OpenAI's original JIT ``.pt``, or a pickle that calls code), before torch sees it; see
    :func:`~bids_vlm.models.checkpoint.vet_checkpoint`. open_clip reads a ``.safetensors`` file
    with safetensors, which runs no code (it is vetted only when its bytes are a torch
    format), and a ``.npz`` / ``.npy`` (big_vision weights) with ``np.load``, which refuses
    pickled objects."""
    suffix = Path(path).suffix
    if suffix in (".npz", ".npy"):
        return
    if suffix == ".safetensors" and checkpoint_format(path) not in TORCH_FORMATS:
        return
    vet_checkpoint(path)


def load_weights(module, path: Path, what: str) -> None:
    """``open_clip.load_checkpoint`` of ``path`` (already passed :func:`check_weights_file`)
    into ``module``; DataError naming the file when it does not fit."""
    import open_clip  # open_clip takes seconds to import; only for its models

    try:
        open_clip.load_checkpoint(module, str(path))
    except Exception as exc:
        raise DataError(f"cannot load {what}: {exc}", path) from exc


PREFIX = "open_clip:"


def parse_generic(name: str) -> tuple[str, str]:
    """``open_clip:<architecture>:<pretrained tag or checkpoint file>`` -> (architecture,
    source); ValueError naming the known architectures / tags when it cannot be used."""
    import open_clip  # open_clip takes seconds to import; only for its models

    arch, _, source = name[len(PREFIX):].partition(":")
    if arch not in open_clip.list_models():
        raise ValueError(f"'{arch}' is not an open_clip architecture (e.g. ViT-B-32, ViT-B-16, "
                         "ViT-L-14; python -c \"import open_clip; print(open_clip.list_models())\")")
    if not source:
        raise ValueError(f"{name}: add a pretrained tag or a checkpoint file, e.g. "
                         f"{PREFIX}{arch}:{(open_clip.list_pretrained_tags_by_model(arch) or ['openai'])[0]}")
    if not Path(source).expanduser().is_file() and \
            source not in open_clip.list_pretrained_tags_by_model(arch):
        raise ValueError(f"{name}: '{source}' is neither a checkpoint file nor a pretrained tag of "
                         f"{arch} ({', '.join(open_clip.list_pretrained_tags_by_model(arch))})")
    return arch, source


def load_generic(name: str, model_dir: str = "") -> OpenClipModel:
    """Any open_clip ViT CLIP: ``open_clip:ViT-B-16:laion2b_s34b_b88k`` (weights from
    ``<model dir>/<arch>-<tag>/`` or the Hugging Face cache) or
    ``open_clip:ViT-B-32:/path/checkpoint.safetensors``; never downloads."""
    import open_clip  # open_clip takes seconds to import; only for its models

    arch, source = parse_generic(name)
    path = Path(source).expanduser()
    cfg = {} if path.is_file() else open_clip.get_pretrained_cfg(arch, source)
    if not path.is_file():
        path = _tagged_weights(name, arch, source, model_dir)
    check_weights_file(path)
    module = open_clip.create_model(arch, pretrained=None,
                                    force_quick_gelu=bool(cfg.get("quick_gelu", False)))
    if not hasattr(module, "visual") or not hasattr(module.visual, "transformer"):
        raise DataError(f"{arch} has no ViT image tower; bids_vlm records transformer blocks")
    load_weights(module, path, f"{arch} weights from this file")
    preprocess = open_clip.image_transform(module.visual.image_size, is_train=False,
                                           mean=cfg.get("mean"), std=cfg.get("std"))
    return OpenClipModel(name, module, preprocess, open_clip.get_tokenizer(arch))


def _tagged_weights(name, arch, tag, model_dir) -> Path:
    folder_name = f"{arch}-{tag}"
    repo = _hf_repo(arch, tag)
    found = _local_weights(folder_name, repo, model_dir)
    if found:
        return found
    raise WeightsNotFoundError(
        f"weights for {name} are not on this machine and bids_vlm does not download at run "
        f"time: put {WEIGHT_FILES[0]} from the Hugging Face repository '{repo}' into "
        f"<model-dir>/{folder_name}/ and pass --model-dir, or fill the cache once on a machine "
        f"with internet: python -c \"import open_clip; open_clip.create_model('{arch}', "
        f"pretrained='{tag}')\"")
