"""Recording artificial neurons (ANs): forward hooks that pool each layer's FFN ANs.

An AN is one hidden unit of a layer's feed-forward block, taken after the nonlinearity
(docs/METHOD.md 3). Its activation for one stimulus is pooled over the tokens of that stimulus:
``mean`` over valid tokens (default), ``cls`` (the token the model pools: CLS for images,
EOT for CLIP text) or ``max`` over valid tokens. Its id is ``model/stream/layer/index``
(:func:`bids_vlm.names.an_id`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from bids_vlm.errors import DataError

POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class StreamSpec:
    """One stream of a model: its layer count and its width (the ANs per layer)."""

    name: str
    n_layers: int
    width: int


@runtime_checkable
class ModelAdapter(Protocol):
    """What the recording code (:func:`bids_vlm.models.extract`) needs of a model; open_clip's
    CLIPs (:class:`~bids_vlm.models.openclip.OpenClipModel`), transformers' CLIPs
    (:class:`~bids_vlm.models.hfclip.HFClipModel`) and METER
    (:class:`~bids_vlm.models.meter.MeterModel`) each adapt theirs to it.

    name: the model's name; module: its torch module (moved to the device while recording);
    streams: {stream: :class:`StreamSpec`}.
    """

    name: str
    module: torch.nn.Module
    streams: dict

    def layer_modules(self, stream: str, kind: str = "ffn") -> dict:
        """{layer index: the module whose call gives the layer's ANs} (``ffn``: the FFN
        activation, its output; ``attn``: the attention, q * k from its inputs)."""

    def batch_first(self, stream: str) -> bool:
        """Whether the stream's hidden states are (B, L, D) rather than (L, B, D)."""

    def prepare(self, stream: str, items: list, device) -> tuple:
        """(model inputs of a batch of ``items``, (B, L) valid-token mask, (B,) index of the
        pooled token), on ``device``."""

    def forward(self, stream: str, inputs):
        """Run the module on prepared inputs (the hooks record the ANs)."""

    def forward_key(self, stream: str) -> str:
        """Streams with the same key are recorded in one forward pass over the same items."""


AN_KINDS = ("ffn", "attn")


def query_key_product(module, inputs, _output):
    """attn ANs of a ``torch.nn.MultiheadAttention`` call: q * k for every head dimension.

    inputs: the call's positional (query, key, value) inputs, shaped like the layer's tokens
    (the block's LayerNorm output). q = query W_q^T + b_q and k = key W_k^T + b_k are the
    projections the attention computes; their elementwise product, (tokens, D) with D = heads x
    head width, is each dimension's contribution to the attention logits of a token with itself.
    """
    query = inputs[0]
    if hasattr(module, "q_proj"):  # transformers attention: separate q / k projections
        return module.q_proj(query) * module.k_proj(query)
    if hasattr(module, "query"):  # BERT / RoBERTa self-attention (METER)
        return module.query(query) * module.key(query)
    key = inputs[1] if len(inputs) > 1 and inputs[1] is not None else query
    dim = module.embed_dim
    weight, bias = module.in_proj_weight, module.in_proj_bias
    q = torch.nn.functional.linear(query, weight[:dim], None if bias is None else bias[:dim])
    k = torch.nn.functional.linear(key, weight[dim:2 * dim],
                                   None if bias is None else bias[dim:2 * dim])
    return q * k


def pool_tokens(hidden, valid, pooling, cls_index):
    """Pool one layer's ANs over tokens.

    hidden: (B, L, U) activations; valid: (B, L) bool, the tokens that belong to the stimulus;
    cls_index: (B,) long, the token used by ``cls`` pooling. Returns (B, U) float32.
    """
    hidden = hidden.float()
    if pooling == "mean":
        weights = valid.to(hidden.dtype).unsqueeze(1)  # (B, 1, L): one product, no (B, L, U)
        return torch.bmm(weights, hidden).squeeze(1) / weights.sum(2).clamp(min=1.0)
    if pooling == "max":
        return hidden.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)
    if pooling == "cls":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), cls_index]
    raise ValueError(f"unknown pooling '{pooling}' (choose from {', '.join(POOLINGS)})")


@contextlib.contextmanager
def recording(modules: dict, valid, cls_index, pooling: str, batch_first: bool, transform=None):
    """Attach forward hooks to ``modules`` ({layer: module}); yields {layer: (B, U) tensor}.

    The hooks pool each module's output (or ``transform(module, inputs, output)``, e.g.
    :func:`query_key_product`) as soon as it is computed, so that only (B, U) per layer is
    kept. They are removed when the block exits, also after an exception.
    """
    pooled = {}
    handles = []

    def make_hook(layer):
        def hook(module, args, kwargs, output):
            inputs = args or tuple(v for k, v in kwargs.items() if k == "hidden_states")
            hidden = transform(module, inputs, output) if transform else output
            hidden = hidden if batch_first else hidden.transpose(0, 1)
            pooled[layer] = pool_tokens(hidden, valid, pooling, cls_index)
        return hook

    try:
        for layer, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(layer), with_kwargs=True))
        yield pooled
    finally:
        for handle in handles:
            handle.remove()


def load_image(path):
    """An image file as RGB; a clear error naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:
        raise DataError(f"cannot read the image: {exc}", path) from exc


def resolve_device(device: str) -> torch.device:
    """``auto`` gives CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def hooks_attached(module: torch.nn.Module) -> int:
    """Number of forward hooks left on ``module`` and its children (0 after recording)."""
    return sum(len(m._forward_hooks) for m in module.modules())


def to_numpy(tensors: dict) -> dict:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in tensors.items()}
