"""METER (CLIP-ViT-B/16 + RoBERTa-base + 6 co-attention layers): streams, loading, tiny model.

Streams (docs/METHOD.md 3, docs/METER.md 4): ``image`` (the ViT blocks, 11 x 3072 ANs), ``text``
(RoBERTa, 12 x 3072), ``cross-image`` and ``cross-text`` (the co-attention layers, 6 x 3072
each). ``image`` and ``text`` are unimodal: an image or a text is encoded alone. The cross
streams take a *pair* item (see :func:`bids_vlm.inputs.stimuli.pair_item`): the image and the text
shown in the same sample. When one side is missing, METER gets a neutral partner: an empty text
(``<s></s>`` only) for an image without text, and an image of the normalisation mean colour
(all zeros after normalisation) for a text without image.

``meter-clip16-roberta`` loads an official checkpoint (pretrain or fine-tuned) from
``<model dir>/meter-clip16-roberta/*.ckpt`` with the safe unpickler of
:mod:`bids_vlm.models.checkpoint`, reading every size from the tensors; the RoBERTa tokenizer
comes from ``<model dir>/meter-clip16-roberta/roberta-base/`` (or ``<model dir>/roberta-base``,
or the local Hugging Face cache). ``tiny-meter`` is the same code with seeded random weights and
a small byte-level tokenizer shipped with the package, for tests.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from bids_vlm.errors import DataError, WeightsNotFoundError
from bids_vlm.models.base import StreamSpec, load_image
from bids_vlm.models.checkpoint import safe_torch_load
from bids_vlm.models.openclip import model_dirs
from bids_vlm.models.meter_arch import Meter, MeterArch, resize_position_embedding
from bids_vlm.inputs.video import FrameSource, is_frame_item
from bids_vlm.inputs.stimuli import split_pair_item

NAME = "meter-clip16-roberta"
STREAMS = ("image", "text", "cross-image", "cross-text")
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TEXT_LEN = 50  # the pretrain, VQA, NLVR2 and SNLI configs (IR-TR: 40)
TINY_ARCH = MeterArch(vit_width=128, vit_layers=2, vit_heads=2, vit_ffn=512, patch=8,
                      vit_tokens=17, vocab=261, text_positions=64, text_width=128,
                      text_layers=2, text_heads=2, text_ffn=512, hidden=128, cross_layers=2,
                      cross_heads=2, cross_ffn=512, clip_text_leftovers=(16, 64))
TINY_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "tiny_roberta"
# state-dict entries METER saves but the model does not use (docs/METER.md 1)
DROPPED = ("text_transformer.embeddings.position_ids",)


class MeterModel:
    """A :class:`~bids_vlm.models.meter_arch.Meter` with its tokenizer and image transform."""

    def __init__(self, name, module: Meter, tokenizer, max_text_len=MAX_TEXT_LEN):
        from torchvision import transforms  # torchvision takes ~1 s to import; only for METER

        self.name = name
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        arch = module.arch
        size = arch.image_size
        self.preprocess = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        self.frames = FrameSource()
        self.streams = {
            "image": StreamSpec("image", arch.vit_layers, arch.vit_ffn),
            "text": StreamSpec("text", arch.text_layers, arch.text_ffn),
            "cross-image": StreamSpec("cross-image", arch.cross_layers, arch.cross_ffn),
            "cross-text": StreamSpec("cross-text", arch.cross_layers, arch.cross_ffn),
        }

    @staticmethod
    def forward_key(stream) -> str:
        """Streams with the same key are recorded in one forward pass (both cross streams)."""
        return "pair" if stream.startswith("cross-") else stream

    def _layers(self, stream):
        m = self.module
        return {"image": m.vit_model.visual.transformer.resblocks,
                "text": m.text_transformer.encoder.layer,
                "cross-image": m.cross_modal_image_layers,
                "cross-text": m.cross_modal_text_layers}[stream]

    def layer_modules(self, stream, kind="ffn") -> dict:
        """ffn: the FFN activation module (QuickGELU in the ViT, ``intermediate`` elsewhere);
        attn: the self-attention module (q * k from its input)."""
        layers = self._layers(stream)
        if stream == "image":
            return {i: (b.attn if kind == "attn" else b.mlp.gelu) for i, b in enumerate(layers)}
        return {i: (la.attention.self if kind == "attn" else la.intermediate)
                for i, la in enumerate(layers)}

    def batch_first(self, stream) -> bool:
        return True

    def _pixels(self, items, device):
        arch = self.module.arch
        blank = torch.zeros(3, arch.image_size, arch.image_size)
        images = [blank if item is None else self.preprocess(
            self.frames.image(item) if is_frame_item(item) else load_image(item))
            for item in items]
        return torch.stack(images).to(device)

    def _tokens(self, texts, device):
        enc = self.tokenizer(["" if t is None else t for t in texts], padding="max_length",
                             truncation=True, max_length=self.max_text_len, return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def prepare(self, stream, items, device):
        """Inputs, (B, L) valid tokens of ``stream`` and (B,) pooled-token index (CLS / <s>)."""
        first = torch.zeros(len(items), dtype=torch.long, device=device)
        n_image = self.module.arch.vit_tokens
        if stream == "image":
            ones = torch.ones(len(items), n_image, dtype=torch.bool, device=device)
            return self._pixels(items, device), ones, first
        if stream == "text":
            ids, valid = self._tokens(items, device)
            return (ids, valid), valid.bool(), first
        images, texts = zip(*(split_pair_item(item) for item in items))
        ids, valid = self._tokens(texts, device)
        inputs = (ids, valid, self._pixels(images, device))
        if stream == "cross-text":
            return inputs, valid.bool(), first
        return inputs, torch.ones(len(items), n_image, dtype=torch.bool, device=device), first

    def forward(self, stream, inputs):
        if stream == "image":
            return self.module.encode_image(inputs)
        if stream == "text":
            return self.module.encode_text(*inputs)
        return self.module.cross(*inputs)


def build_tiny_meter(seed: int = 0) -> MeterModel:
    """The tiny random-weight METER (2 + 2 + 2 x 2 layers, 512 ANs per layer), seeded."""
    torch.manual_seed(seed)
    module = Meter(TINY_ARCH)
    _init_weights(module)
    return MeterModel("tiny-meter", module, load_tokenizer(TINY_TOKENIZER), max_text_len=40)


def _init_weights(module):
    """Random weights with the scale of trained ones (embeddings and LayerNorms included)."""
    for name, p in module.named_parameters():
        if name.endswith("LayerNorm.weight") or ".ln_" in name or name.endswith("ln_pre.weight"):
            continue
        torch.nn.init.normal_(p, std=0.02 if p.dim() > 1 else 0.01)


def load_tokenizer(folder):
    """A RoBERTa tokenizer from a local folder (vocab.json, merges.txt); never downloads."""
    # local import: transformers takes seconds to import; only for its models
    from transformers import RobertaTokenizerFast

    try:
        return RobertaTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"cannot load a RoBERTa tokenizer from {folder}: {exc}") \
            from exc


def arch_from_state(state: dict, config: dict | None = None) -> MeterArch:
    """METER sizes from the state dict's tensors (docs/METER.md 2); head counts by METER's rules:
    ViT and RoBERTa heads = width // 64, co-attention heads = the config's ``num_heads`` (else
    hidden // 64)."""
    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    vis = "vit_model.visual."
    text = "text_transformer."
    pos = state[f"{vis}positional_embedding"]
    hidden = state["cross_modal_text_transform.weight"].shape[0]
    heads = tuple(h for h, key in (("mlm", "mlm_score.bias"), ("itm", "itm_score.fc.weight"),
                                   ("vqa", "vqa_classifier.0.weight"),
                                   ("nlvr2", "nlvr2_classifier.0.weight"),
                                   ("snli", "snli_classifier.0.weight"),
                                   ("rank", "rank_output.weight")) if key in state)
    leftover = state.get("vit_model.positional_embedding")
    return MeterArch(
        vit_width=pos.shape[1], vit_layers=count(f"{vis}transformer.resblocks."),
        vit_heads=pos.shape[1] // 64,
        vit_ffn=state[f"{vis}transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        patch=state[f"{vis}conv1.weight"].shape[-1], vit_tokens=pos.shape[0],
        vocab=state[f"{text}embeddings.word_embeddings.weight"].shape[0],
        text_positions=state[f"{text}embeddings.position_embeddings.weight"].shape[0],
        text_types=state[f"{text}embeddings.token_type_embeddings.weight"].shape[0],
        text_width=state[f"{text}embeddings.word_embeddings.weight"].shape[1],
        text_layers=count(f"{text}encoder.layer."),
        text_heads=state[f"{text}embeddings.word_embeddings.weight"].shape[1] // 64,
        text_ffn=state[f"{text}encoder.layer.0.intermediate.dense.weight"].shape[0],
        text_pooler=f"{text}pooler.dense.weight" in state, hidden=hidden,
        cross_layers=count("cross_modal_text_layers."),
        cross_heads=int((config or {}).get("num_heads", hidden // 64)),
        cross_ffn=state["cross_modal_text_layers.0.intermediate.dense.weight"].shape[0],
        image_types=state["token_type_embeddings.weight"].shape[0],
        clip_text_leftovers=tuple(leftover.shape) if leftover is not None else (),
        heads=heads, vqa_labels=state["vqa_classifier.3.weight"].shape[0] if "vqa" in heads
        else 3129)


def read_checkpoint(path) -> tuple[dict, dict]:
    """(state dict, hyper-parameter config) of a released METER checkpoint (a pytorch-lightning
    dict with ``state_dict``) or of a bare state dict; never runs code from the file."""
    data = safe_torch_load(path)
    if not isinstance(data, dict):
        raise DataError(f"not a METER checkpoint: it holds a {type(data).__name__}, not a dict",
                        path)
    state = data.get("state_dict", data)
    config = (data.get("hyper_parameters") or {}).get("config") or {}
    if "cross_modal_text_transform.weight" not in state:
        raise DataError("not a METER checkpoint: no 'cross_modal_text_transform.weight' in its "
                        "state_dict", path)
    state = {k: v for k, v in state.items() if k not in DROPPED and
             not k.startswith(("train_", "val_", "test_"))}
    return state, dict(config) if isinstance(config, dict) else {}


def module_from_checkpoint(path, image_size: int = 0) -> tuple[Meter, dict]:
    """A :class:`Meter` with the checkpoint's weights (and its config); ``image_size`` > 0
    resizes the ViT position embedding to that resolution (METER's adapt_position_encoding)."""
    state, config = read_checkpoint(path)
    arch = arch_from_state(state, config)
    if image_size and image_size != arch.image_size:
        key = "vit_model.visual.positional_embedding"
        state[key] = resize_position_embedding(state[key], image_size // arch.patch)
        arch = dataclasses.replace(arch, vit_tokens=state[key].shape[0])
    module = Meter(arch)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"the checkpoint does not match METER: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}", path)
    return module, config


def find_meter_files(model_dir: str = "") -> tuple[Path, Path]:
    """(checkpoint, tokenizer folder) of ``meter-clip16-roberta``; a clear error when absent."""
    folders = model_dirs(model_dir)
    ckpts = [p for d in folders for p in sorted((d / NAME).glob("*.ckpt"))]
    if not ckpts:
        where = ", ".join(str(d / NAME) for d in folders) or "(no --model-dir given)"
        raise WeightsNotFoundError(
            f"no METER checkpoint for {NAME}: looked for *.ckpt in {where}. bids_vlm does not "
            "download at run time: put an official METER checkpoint (e.g. "
            "meter_clip16_288_roberta_pretrain.ckpt from github.com/zdou0830/METER) into "
            f"<model-dir>/{NAME}/ and pass --model-dir (or set BIDS_VLM_MODEL_DIR)")
    if len(ckpts) > 1:
        raise DataError(f"several checkpoints for {NAME}: {', '.join(map(str, ckpts))}; keep "
                        "one per folder")
    return ckpts[0], _tokenizer_folder(folders)


def _tokenizer_folder(folders) -> Path:
    for d in folders:
        for cand in (d / NAME / "roberta-base", d / "roberta-base"):
            if (cand / "vocab.json").is_file():
                return cand
    try:
        from huggingface_hub import snapshot_download  # only when looking for downloaded weights

        return Path(snapshot_download("roberta-base", local_files_only=True))
    except Exception as exc:  # not in the local cache (several exception types)
        raise WeightsNotFoundError(
            f"METER needs the RoBERTa tokenizer (roberta-base: vocab.json and merges.txt) from "
            f"a local folder, and bids_vlm does not download at run time: put it in "
            f"<model-dir>/{NAME}/roberta-base/ (e.g. RobertaTokenizerFast.from_pretrained("
            "'roberta-base').save_pretrained(DIR) on a machine with internet)") from exc


def load_meter(model_dir: str = "", image_size: int = 0) -> MeterModel:
    """``meter-clip16-roberta`` from local files."""
    ckpt, tokenizer_dir = find_meter_files(model_dir)
    module, config = module_from_checkpoint(ckpt, image_size)
    return MeterModel(NAME, module, load_tokenizer(tokenizer_dir),
                      int(config.get("max_text_len", MAX_TEXT_LEN)))
