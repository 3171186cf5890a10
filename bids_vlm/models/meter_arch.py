"""METER (CLIP-ViT + RoBERTa + co-attention layers) as plain PyTorch modules.

A clean re-implementation of the forward pass described in docs/METER.md section 3, with module
attribute names equal to the released checkpoints' state-dict keys (docs/METER.md section 2),
so that ``load_state_dict`` takes their ``state_dict`` as it is. Sizes come from
:class:`MeterArch`, which :func:`bids_vlm.models.meter.arch_from_state` reads from the
checkpoint's tensors.

Every activation whose output is an AN is a parameter-free submodule (``mlp.gelu`` in the ViT
blocks, ``intermediate`` in the RoBERTa and co-attention layers), so forward hooks see exactly
the FFN hidden units after their nonlinearity. All modules are batch-first: tokens are (B, L, D).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

PAD_ID = 1  # RoBERTa <pad>; <s> = 0 and </s> = 2
MASK_FILL = -10000.0  # METER's additive attention mask for padded tokens


@dataclass(frozen=True)
class MeterArch:
    """Sizes of a METER model. Head counts are not stored in the weights, so they are explicit."""

    vit_width: int = 768
    vit_layers: int = 11  # stored ViT blocks (METER drops CLIP's 12th)
    vit_heads: int = 12
    vit_ffn: int = 3072
    patch: int = 16
    vit_tokens: int = 325  # 1 + (image_size / patch)^2; 325 at 288 px
    vocab: int = 50265
    text_positions: int = 514
    text_types: int = 1
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_ffn: int = 3072
    text_pooler: bool = True  # present in the checkpoint, unused
    hidden: int = 768  # co-attention width
    cross_layers: int = 6
    cross_heads: int = 12
    cross_ffn: int = 3072
    image_types: int = 2  # token_type_embeddings rows (3 for NLVR2)
    clip_text_leftovers: tuple = (77, 512)  # vit_model.positional_embedding; () when absent
    heads: tuple = ("mlm", "itm")  # task heads present: mlm itm vqa nlvr2 snli rank
    vqa_labels: int = 3129

    @property
    def grid(self) -> int:
        return int(round(math.sqrt(self.vit_tokens - 1)))

    @property
    def image_size(self) -> int:
        return self.grid * self.patch


class QuickGELU(nn.Module):
    """CLIP's activation, x * sigmoid(1.702 x)."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """A pre-LN CLIP ViT block: x + attn(ln_1 x), then x + c_proj(QuickGELU(c_fc(ln_2 x)))."""

    def __init__(self, width, heads, ffn):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, ffn), gelu=QuickGELU(), c_proj=nn.Linear(ffn, width)))
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, ffn):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, ffn) for _ in range(layers)])

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


class VisualTransformer(nn.Module):
    """METER's CLIP ViT: every token after ``ln_post``, no projection."""

    def __init__(self, arch: MeterArch):
        super().__init__()
        width = arch.vit_width
        self.conv1 = nn.Conv2d(3, width, arch.patch, arch.patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(arch.vit_tokens, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-5)
        self.transformer = Transformer(width, arch.vit_layers, arch.vit_heads, arch.vit_ffn)
        self.ln_post = nn.LayerNorm(width, eps=1e-5)

    def forward(self, pixels):
        """pixels: (B, 3, H, W) normalised -> (B, 1 + (H/patch)(W/patch), width)."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_post(self.transformer(self.ln_pre(x)))


class ClipLeftovers(nn.Module):
    """``vit_model``: the visual tower plus CLIP text parameters METER saves but never uses."""

    def __init__(self, arch: MeterArch):
        super().__init__()
        self.visual = VisualTransformer(arch)
        if arch.clip_text_leftovers:
            context, width = arch.clip_text_leftovers
            self.positional_embedding = nn.Parameter(torch.zeros(context, width))
            self.ln_final = nn.LayerNorm(width)


class SelfAttention(nn.Module):
    """BERT attention: queries from ``hidden``, keys and values from ``context`` (itself when
    None); ``mask``: additive, broadcastable to (B, heads, L_q, L_k)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def _split(self, x):
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, hidden, mask=None, context=None):
        context = hidden if context is None else context
        q, k, v = self._split(self.query(hidden)), self._split(self.key(context)), \
            self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None
                                             else mask.to(q.dtype))
        return out.transpose(1, 2).flatten(2)


class AddNorm(nn.Module):
    """``dense`` then LayerNorm of the sum with the residual (BERT's post-LN output)."""

    def __init__(self, width_in, width, eps):
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, hidden, residual):
        return self.LayerNorm(self.dense(hidden) + residual)


class Attention(nn.Module):
    def __init__(self, width, heads, eps):
        super().__init__()
        self.self = SelfAttention(width, heads)
        self.output = AddNorm(width, width, eps)

    def forward(self, hidden, mask=None, context=None):
        return self.output(self.self(hidden, mask, context), hidden)


class Intermediate(nn.Module):
    """768 -> 3072 and erf-GELU: its output is the layer's FFN ANs."""

    def __init__(self, width, ffn):
        super().__init__()
        self.dense = nn.Linear(width, ffn)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, x):
        return self.intermediate_act_fn(self.dense(x))


class TextLayer(nn.Module):
    """A RoBERTa layer (post-LN, eps 1e-5)."""

    def __init__(self, width, heads, ffn, eps=1e-5):
        super().__init__()
        self.attention = Attention(width, heads, eps)
        self.intermediate = Intermediate(width, ffn)
        self.output = AddNorm(ffn, width, eps)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class CrossLayer(nn.Module):
    """METER's BertCrossLayer: self-attention, cross-attention to the other stream, FFN; all
    LayerNorms eps 1e-12 (BertConfig's default, which METER never overrides)."""

    def __init__(self, width, heads, ffn, eps=1e-12):
        super().__init__()
        self.attention = Attention(width, heads, eps)
        self.crossattention = Attention(width, heads, eps)
        self.intermediate = Intermediate(width, ffn)
        self.output = AddNorm(ffn, width, eps)

    def forward(self, x, other, mask, other_mask):
        x = self.attention(x, mask)
        x = self.crossattention(x, other_mask, other)
        return self.output(self.intermediate(x), x)


class TextEmbeddings(nn.Module):
    def __init__(self, arch: MeterArch):
        super().__init__()
        self.word_embeddings = nn.Embedding(arch.vocab, arch.text_width, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(arch.text_positions, arch.text_width,
                                                padding_idx=PAD_ID)
        self.token_type_embeddings = nn.Embedding(arch.text_types, arch.text_width)
        self.LayerNorm = nn.LayerNorm(arch.text_width, eps=1e-5)

    def forward(self, ids):
        """ids: (B, T) -> (B, T, width); positions count real tokens from PAD_ID + 1."""
        real = (ids != PAD_ID).long()
        positions = torch.cumsum(real, dim=1) * real + PAD_ID
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + \
            self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x)


class Pooler(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))


class Roberta(nn.Module):
    """``text_transformer``: embeddings and ``encoder.layer``; the pooler is kept for loading."""

    def __init__(self, arch: MeterArch):
        super().__init__()
        self.embeddings = TextEmbeddings(arch)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([TextLayer(arch.text_width, arch.text_heads,
                                                      arch.text_ffn)
                                            for _ in range(arch.text_layers)])
        if arch.text_pooler:
            self.pooler = Pooler(arch.text_width)

    def forward(self, ids, mask):
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x


def additive_mask(valid):
    """(B, T) 0/1 -> (B, 1, 1, T) additive attention mask, -10000 on padding."""
    return (1.0 - valid[:, None, None, :].float()) * MASK_FILL


class MLMHead(nn.Module):
    def __init__(self, width, vocab):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(width, width)
        self.transform.LayerNorm = nn.LayerNorm(width, eps=1e-12)
        self.decoder = nn.Linear(width, vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, x):
        x = self.transform.LayerNorm(F.gelu(self.transform.dense(x)))
        return self.decoder(x) + self.bias


def _classifier(width_in, width, n_out):
    return nn.Sequential(nn.Linear(width_in, width), nn.LayerNorm(width), nn.GELU(),
                         nn.Linear(width, n_out))


class Meter(nn.Module):
    """The METER model: unimodal encoders, 6 co-attention layers, poolers and task heads.

    Inputs: ``ids`` (B, T) RoBERTa token ids, ``valid`` (B, T) 0/1 non-pad mask, ``pixels``
    (B, 3, S, S) CLIP-normalised images. :meth:`forward` returns ``cls_feats`` (B, 2 * hidden),
    the concatenated text and image pooler outputs the heads take.
    """

    def __init__(self, arch: MeterArch):
        super().__init__()
        self.arch = arch
        h = arch.hidden
        self.vit_model = ClipLeftovers(arch)
        self.text_transformer = Roberta(arch)
        self.cross_modal_text_transform = nn.Linear(arch.text_width, h)
        self.cross_modal_image_transform = nn.Linear(arch.vit_width, h)
        self.token_type_embeddings = nn.Embedding(arch.image_types, h)
        self.cross_modal_image_layers = nn.ModuleList(
            [CrossLayer(h, arch.cross_heads, arch.cross_ffn) for _ in range(arch.cross_layers)])
        self.cross_modal_text_layers = nn.ModuleList(
            [CrossLayer(h, arch.cross_heads, arch.cross_ffn) for _ in range(arch.cross_layers)])
        self.cross_modal_image_pooler = Pooler(h)
        self.cross_modal_text_pooler = Pooler(h)
        self._add_heads(arch, h)

    def _add_heads(self, arch, h):
        if "mlm" in arch.heads:
            self.mlm_score = MLMHead(h, arch.vocab)
        if "itm" in arch.heads:
            self.itm_score = nn.Module()
            self.itm_score.fc = nn.Linear(2 * h, 2)
        if "vqa" in arch.heads:
            self.vqa_classifier = _classifier(2 * h, 2 * h, arch.vqa_labels)
        if "nlvr2" in arch.heads:
            self.nlvr2_classifier = _classifier(4 * h, 2 * h, 2)
        if "snli" in arch.heads:
            self.snli_classifier = _classifier(2 * h, 2 * h, 3)
        if "rank" in arch.heads:
            self.rank_output = nn.Linear(2 * h, 1)

    def encode_text(self, ids, valid):
        """(B, T) ids -> (B, T, text_width) RoBERTa output (no cross-modal transform)."""
        return self.text_transformer(ids, additive_mask(valid))

    def encode_image(self, pixels):
        """(B, 3, S, S) -> (B, tokens, vit_width), every token after ln_post."""
        return self.vit_model.visual(pixels)

    def cross(self, ids, valid, pixels, image_type=1):
        """Both streams through the co-attention layers -> (text (B, T, h), image (B, P, h))."""
        text = self.cross_modal_text_transform(self.encode_text(ids, valid))
        image = self.cross_modal_image_transform(self.encode_image(pixels))
        text = text + self.token_type_embeddings(torch.zeros_like(ids))
        image_types = torch.full(image.shape[:2], image_type, dtype=torch.long,
                                 device=image.device)
        image = image + self.token_type_embeddings(image_types)
        text_mask = additive_mask(valid)
        image_mask = additive_mask(torch.ones(image.shape[:2], device=image.device))
        for text_layer, image_layer in zip(self.cross_modal_text_layers,
                                           self.cross_modal_image_layers):
            text, image = (text_layer(text, image, text_mask, image_mask),
                           image_layer(image, text, image_mask, text_mask))
        return text, image

    def forward(self, ids, valid, pixels, image_type=1):
        text, image = self.cross(ids, valid, pixels, image_type)
        return torch.cat([self.cross_modal_text_pooler(text),
                          self.cross_modal_image_pooler(image)], dim=-1)


def resize_position_embedding(pos, grid: int):
    """A ViT position embedding for another image grid, as METER's ``adapt_position_encoding``:
    keep the CLS row, bicubic-interpolate the patch rows as a square grid.

    pos: (1 + g^2, D) -> (1 + grid^2, D).
    """
    old = int(round(math.sqrt(pos.shape[0] - 1)))
    if old == grid:
        return pos
    patches = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic",
                            align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)
    return torch.cat([pos[:1], patches], dim=0)
