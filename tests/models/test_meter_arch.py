"""METER architecture: the full-size model has the released checkpoint's key set and shapes
(docs/METER.md section 2), and the position embedding is resized as METER does."""
from __future__ import annotations

import pytest
import torch

from bids_vlm.models.meter_arch import Meter, MeterArch, resize_position_embedding


def _bert_attention(prefix, width=768):
    keys = {}
    for part in ("query", "key", "value"):
        keys[f"{prefix}.self.{part}.weight"] = (width, width)
        keys[f"{prefix}.self.{part}.bias"] = (width,)
    keys[f"{prefix}.output.dense.weight"] = (width, width)
    keys[f"{prefix}.output.dense.bias"] = (width,)
    keys[f"{prefix}.output.LayerNorm.weight"] = (width,)
    keys[f"{prefix}.output.LayerNorm.bias"] = (width,)
    return keys


def _ffn(prefix):
    return {f"{prefix}.intermediate.dense.weight": (3072, 768),
            f"{prefix}.intermediate.dense.bias": (3072,),
            f"{prefix}.output.dense.weight": (768, 3072), f"{prefix}.output.dense.bias": (768,),
            f"{prefix}.output.LayerNorm.weight": (768,), f"{prefix}.output.LayerNorm.bias": (768,)}


def _linear(prefix, n_out, n_in, bias=True):
    return {f"{prefix}.weight": (n_out, n_in), **({f"{prefix}.bias": (n_out,)} if bias else {})}


def expected_pretrain_keys() -> dict:
    """The pretrain checkpoint's parameter keys and shapes, written out from docs/METER.md 2."""
    v = "vit_model.visual"
    keys = {f"{v}.conv1.weight": (768, 3, 16, 16), f"{v}.class_embedding": (768,),
            f"{v}.positional_embedding": (325, 768),
            "vit_model.positional_embedding": (77, 512),
            "vit_model.ln_final.weight": (512,), "vit_model.ln_final.bias": (512,)}
    for ln in ("ln_pre", "ln_post"):
        keys.update({f"{v}.{ln}.weight": (768,), f"{v}.{ln}.bias": (768,)})
    for i in range(11):
        b = f"{v}.transformer.resblocks.{i}"
        keys.update({f"{b}.attn.in_proj_weight": (2304, 768), f"{b}.attn.in_proj_bias": (2304,),
                     **_linear(f"{b}.attn.out_proj", 768, 768), **_linear(f"{b}.mlp.c_fc", 3072, 768),
                     **_linear(f"{b}.mlp.c_proj", 768, 3072)})
        for ln in ("ln_1", "ln_2"):
            keys.update({f"{b}.{ln}.weight": (768,), f"{b}.{ln}.bias": (768,)})
    t = "text_transformer"
    keys.update({f"{t}.embeddings.word_embeddings.weight": (50265, 768),
                 f"{t}.embeddings.position_embeddings.weight": (514, 768),
                 f"{t}.embeddings.token_type_embeddings.weight": (1, 768),
                 f"{t}.embeddings.LayerNorm.weight": (768,),
                 f"{t}.embeddings.LayerNorm.bias": (768,), **_linear(f"{t}.pooler.dense", 768, 768)})
    for i in range(12):
        keys.update({**_bert_attention(f"{t}.encoder.layer.{i}.attention"),
                     **_ffn(f"{t}.encoder.layer.{i}")})
    for side in ("text", "image"):
        keys.update(_linear(f"cross_modal_{side}_transform", 768, 768))
        keys.update(_linear(f"cross_modal_{side}_pooler.dense", 768, 768))
        for i in range(6):
            layer = f"cross_modal_{side}_layers.{i}"
            keys.update({**_bert_attention(f"{layer}.attention"),
                         **_bert_attention(f"{layer}.crossattention"), **_ffn(layer)})
    keys.update({"token_type_embeddings.weight": (2, 768),
                 **_linear("mlm_score.transform.dense", 768, 768),
                 "mlm_score.transform.LayerNorm.weight": (768,),
                 "mlm_score.transform.LayerNorm.bias": (768,),
                 "mlm_score.decoder.weight": (50265, 768), "mlm_score.bias": (50265,),
                 **_linear("itm_score.fc", 2, 1536)})
    return keys


@pytest.fixture(scope="module")
def full_size():
    """The full-size pretrain METER, built without allocating memory (meta tensors)."""
    with torch.device("meta"):
        return Meter(MeterArch())


def test_full_size_model_has_the_checkpoint_keys_and_shapes(full_size):
    expected = expected_pretrain_keys()
    state = full_size.state_dict()
    assert len(expected) == 670
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    n_params = sum(p.numel() for p in full_size.parameters())
    assert abs(n_params - 358.5e6) < 0.1e6, n_params


def test_sizes_are_read_back_from_the_tensors(full_size):
    from bids_vlm.models.meter import arch_from_state

    arch = arch_from_state(full_size.state_dict(), {"num_heads": 12})
    assert arch == MeterArch()
    assert (arch.image_size, arch.grid) == (288, 18)
    assert arch.vit_heads == arch.text_heads == arch.cross_heads == 12


def test_task_heads_follow_the_checkpoint():
    arch = MeterArch(heads=("vqa",), image_types=2, vit_tokens=1297)
    with torch.device("meta"):
        state = Meter(arch).state_dict()
    assert state["vqa_classifier.0.weight"].shape == (1536, 1536)
    assert state["vqa_classifier.1.weight"].shape == (1536,)
    assert state["vqa_classifier.3.weight"].shape == (3129, 1536)
    assert "mlm_score.bias" not in state and "itm_score.fc.weight" not in state
    with torch.device("meta"):
        nlvr2 = Meter(MeterArch(heads=("nlvr2",), image_types=3)).state_dict()
    assert nlvr2["nlvr2_classifier.0.weight"].shape == (1536, 3072)
    assert nlvr2["token_type_embeddings.weight"].shape == (3, 768)


def test_position_embedding_resize_keeps_cls_and_interpolates():
    grid = torch.arange(16.0).reshape(4, 4)
    pos = torch.cat([torch.full((1, 2), -7.0), grid.reshape(16, 1).repeat(1, 2)])
    out = resize_position_embedding(pos, 8)
    assert out.shape == (65, 2)
    assert torch.equal(out[0], pos[0])  # CLS row kept
    up = out[1:, 0].reshape(8, 8)
    # bicubic upsampling of a linear ramp stays monotone along both axes
    assert (up[:, 1:] >= up[:, :-1] - 1e-4).all() and (up[1:] >= up[:-1] - 1e-4).all()
    assert resize_position_embedding(pos, 4) is pos
    back = resize_position_embedding(out, 4)
    assert back.shape == pos.shape


def test_forward_shapes_of_a_tiny_model():
    from bids_vlm.models.meter import TINY_ARCH

    torch.manual_seed(0)
    model = Meter(TINY_ARCH).eval()
    ids = torch.tensor([[0, 40, 50, 2, 1, 1], [0, 60, 2, 1, 1, 1]])
    valid = (ids != 1).long()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text, image = model.cross(ids, valid, pixels)
        feats = model(ids, valid, pixels)
    assert text.shape == (2, 6, 128) and image.shape == (2, 17, 128)
    assert feats.shape == (2, 256)
    # padding does not change the real tokens' features
    with torch.no_grad():
        longer = torch.cat([ids, torch.ones(2, 3, dtype=torch.long)], 1)
        text2, image2 = model.cross(longer, (longer != 1).long(), pixels)
    torch.testing.assert_close(text2[0, :4], text[0, :4], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(image2, image, rtol=1e-4, atol=1e-5)
