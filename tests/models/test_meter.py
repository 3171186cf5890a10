"""METER streams and loading: tiny-meter shapes, ANs recomputed without hooks for every stream,
hook removal, image-text pairs, and checkpoints in the released format loaded from local files."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from conftest import run_cli
from datagen import make_images
from weights import save_lightning_style, write_released_checkpoint

from bids_vlm.config import ModelConfig
from bids_vlm.errors import DataError, WeightsNotFoundError
from bids_vlm.models import REGISTRY, extract, extract_cached, load_model
from bids_vlm.models.base import hooks_attached
from bids_vlm.models.meter import (
    NAME,
    TINY_TOKENIZER,
    find_meter_files,
    load_meter,
    module_from_checkpoint,
)
from bids_vlm.models.meter_arch import additive_mask
from bids_vlm.inputs.stimuli import pair_item

TEXTS = ["a photo of a face", "a house", "a small red chair on the grass"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-meter", ModelConfig())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stim")
    return [str(folder / n) for n in make_images(folder, n=3)]


def pairs(images):
    return [pair_item(images[0], TEXTS[0]), pair_item(images[1], None),
            pair_item(None, TEXTS[2])]


def all_streams(images):
    return {"image": images, "text": TEXTS, "cross-image": pairs(images),
            "cross-text": pairs(images)}


def test_tiny_meter_shapes(tiny, images):
    acts = extract(tiny, all_streams(images), ModelConfig(), progress=False)
    assert sorted(acts) == sorted(f"{s}/{i:02d}" for s in ("image", "text", "cross-image",
                                                            "cross-text") for i in range(2))
    assert all(a.shape == (3, 512) and a.dtype == np.float32 for a in acts.values())
    assert {s: (v.n_layers, v.width) for s, v in tiny.streams.items()} == \
        REGISTRY["tiny-meter"].streams
    assert REGISTRY[NAME].streams == {"image": (11, 3072), "text": (12, 3072),
                                      "cross-image": (6, 3072), "cross-text": (6, 3072)}


def _mean(hidden, valid):
    w = valid.float().unsqueeze(-1)
    return ((hidden * w).sum(1) / w.sum(1)).numpy()


def test_unimodal_ans_match_hook_free_forward(tiny, images):
    m = tiny.module
    pixels, _, _ = tiny.prepare("image", images, "cpu")
    (ids, valid), _, _ = tiny.prepare("text", TEXTS, "cpu")
    with torch.no_grad():
        vis = m.vit_model.visual
        x = vis.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([vis.class_embedding.expand(3, 1, -1), x], 1) + vis.positional_embedding
        x = vis.transformer.resblocks[0](vis.ln_pre(x))
        block = vis.transformer.resblocks[1]
        h = block.ln_2(x + block.attn(*[block.ln_1(x)] * 3)[0])
        hidden = block.mlp.c_fc(h)
        image_ans = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
        layers = m.text_transformer.encoder.layer
        t = layers[0](m.text_transformer.embeddings(ids), additive_mask(valid))
        a = layers[1].attention(t, additive_mask(valid))
        text_ans = torch.nn.functional.gelu(layers[1].intermediate.dense(a))
    acts = extract(tiny, {"image": images, "text": TEXTS}, ModelConfig(layers=(1,)),
                   progress=False)
    np.testing.assert_allclose(acts["image/01"], image_ans.mean(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(acts["text/01"], _mean(text_ans, valid), rtol=1e-4, atol=1e-5)
    assert int(valid.sum(1)[1]) == len("a house") + 2  # byte tokens + <s> and </s>


def test_cross_ans_match_hook_free_forward(tiny, images):
    """Layer 1 of both cross streams recomputed from layer 0's outputs by hand."""
    m = tiny.module
    items = pairs(images)
    (ids, valid, pixels), _, _ = tiny.prepare("cross-text", items, "cpu")
    with torch.no_grad():
        text = m.cross_modal_text_transform(m.encode_text(ids, valid)) + \
            m.token_type_embeddings.weight[0]
        image = m.cross_modal_image_transform(m.encode_image(pixels)) + \
            m.token_type_embeddings.weight[1]
        tmask = additive_mask(valid)
        imask = torch.zeros(3, 1, 1, image.shape[1])
        text0 = m.cross_modal_text_layers[0](text, image, tmask, imask)
        image0 = m.cross_modal_image_layers[0](image, text, imask, tmask)

        def ffn(layer, x, other, mask, other_mask):
            x = layer.attention(x, mask)
            x = layer.crossattention(x, other_mask, other)
            return torch.nn.functional.gelu(layer.intermediate.dense(x))

        text_ans = ffn(m.cross_modal_text_layers[1], text0, image0, tmask, imask)
        image_ans = ffn(m.cross_modal_image_layers[1], image0, text0, imask, tmask)
    acts = extract(tiny, {"cross-image": items, "cross-text": items},
                   ModelConfig(layers=(1,)), progress=False)
    np.testing.assert_allclose(acts["cross-text/01"], _mean(text_ans, valid), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(acts["cross-image/01"], image_ans.mean(1).numpy(), rtol=1e-4,
                               atol=1e-5)


def test_missing_side_gets_a_neutral_partner(tiny, images):
    (ids, valid, pixels), _, _ = tiny.prepare("cross-text", pairs(images), "cpu")
    assert ids[1, :2].tolist() == [0, 2] and int(valid[1].sum()) == 2  # empty text: <s></s>
    assert torch.count_nonzero(pixels[2]) == 0  # no image: the mean colour, zero after norm
    assert torch.count_nonzero(pixels[0]) > 0
    with pytest.raises(ValueError, match="not a pair item"):
        tiny.prepare("cross-text", ["just text"], "cpu")


def test_both_cross_streams_come_from_one_forward_pass(tiny, images, monkeypatch):
    calls = []
    original = tiny.module.cross
    monkeypatch.setattr(tiny.module, "cross", lambda *a: (calls.append(1), original(*a))[1])
    extract(tiny, {"cross-image": pairs(images), "cross-text": pairs(images)}, ModelConfig(),
            progress=False)
    assert len(calls) == 1


def test_hooks_removed_after_exception(tiny, images, monkeypatch):
    original = tiny.module.cross

    def broken(*args):
        original(*args)
        assert hooks_attached(tiny.module) == 4  # 2 layers x 2 cross streams
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny.module, "cross", broken)
    with pytest.raises(RuntimeError, match="boom"):
        extract(tiny, {"cross-image": pairs(images), "cross-text": pairs(images)},
                ModelConfig(), progress=False)
    assert hooks_attached(tiny.module) == 0


def test_attn_ans_of_every_stream(tiny, images):
    acts = extract(tiny, all_streams(images), ModelConfig(an_kind="attn", layers=(0,)),
                   progress=False)
    assert {k: v.shape for k, v in acts.items()} == {
        f"{s}/00": (3, 128) for s in ("image", "text", "cross-image", "cross-text")}
    m = tiny.module
    (ids, valid), _, _ = tiny.prepare("text", TEXTS, "cpu")
    with torch.no_grad():
        h = m.text_transformer.embeddings(ids)
        att = m.text_transformer.encoder.layer[0].attention.self
        qk = att.query(h) * att.key(h)
    np.testing.assert_allclose(acts["text/00"], _mean(qk, valid), rtol=1e-4, atol=1e-5)


def test_pair_cache(tiny, images, tmp_path):
    items = all_streams(images)
    first, computed = extract_cached(tiny, items, ModelConfig(), tmp_path, progress=False)
    assert computed == 12
    again, computed = extract_cached(tiny, items, ModelConfig(), tmp_path, progress=False)
    assert computed == 0 and all(np.array_equal(first[k], again[k]) for k in first)
    # the same image with another text is another cross stimulus
    changed = dict(items, **{s: [pair_item(images[0], "other words")] + pairs(images)[1:]
                             for s in ("cross-image", "cross-text")})
    _, computed = extract_cached(tiny, changed, ModelConfig(), tmp_path, progress=False)
    assert computed == 2


def test_released_checkpoint_reproduces_the_saved_model(tiny, images, tmp_path):
    write_released_checkpoint(tmp_path, tiny)
    loaded = load_meter(str(tmp_path))
    assert loaded.name == NAME and loaded.max_text_len == 40
    assert loaded.module.arch == tiny.module.arch
    items = all_streams(images)
    want = extract(tiny, items, ModelConfig(), progress=False)
    got = extract(loaded, items, ModelConfig(), progress=False)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    (ids, valid, pixels), _, _ = tiny.prepare("cross-text", pairs(images), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(ids, valid, pixels),
                                   tiny.module(ids, valid, pixels))


def test_checkpoint_at_another_image_size(tiny, tmp_path):
    ckpt = write_released_checkpoint(tmp_path, tiny) / "meter_clip16_288_roberta_pretrain.ckpt"
    module, _ = module_from_checkpoint(ckpt, image_size=48)
    assert module.arch.image_size == 48 and module.arch.vit_tokens == 37
    assert module.vit_model.visual.positional_embedding.shape == (37, 128)
    torch.testing.assert_close(module.vit_model.visual.positional_embedding[0],
                               tiny.module.vit_model.visual.positional_embedding[0])


def test_checkpoint_that_is_not_meter(tmp_path):
    target = tmp_path / NAME
    target.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, target / "x.ckpt")
    shutil.copytree(TINY_TOKENIZER, target / "roberta-base")
    with pytest.raises(DataError, match="not a METER checkpoint"):
        load_meter(str(tmp_path))


def test_checkpoint_with_wrong_keys(tiny, tmp_path):
    target = write_released_checkpoint(tmp_path, tiny)
    ckpt = target / "meter_clip16_288_roberta_pretrain.ckpt"
    state = dict(tiny.module.state_dict())
    state.pop("cross_modal_image_pooler.dense.bias")
    state["surprise.weight"] = torch.zeros(1)
    save_lightning_style(ckpt, state, {"num_heads": 2})
    with pytest.raises(DataError, match="missing.*cross_modal_image_pooler.dense.bias.*"
                                        "unexpected.*surprise.weight"):
        load_meter(str(tmp_path))


def test_missing_checkpoint_and_tokenizer_messages(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("BIDS_VLM_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match="no METER checkpoint .* does not download"):
        find_meter_files(str(tmp_path))
    target = write_released_checkpoint(tmp_path, tiny)
    shutil.rmtree(target / "roberta-base")
    with pytest.raises(WeightsNotFoundError, match="RoBERTa tokenizer"):
        find_meter_files(str(tmp_path))


@pytest.mark.slow
def test_cli_missing_meter_exits_66_fast(planted, tmp_path):
    start = time.monotonic()
    proc = run_cli(str(planted.root), str(tmp_path / "out"), "participant", "--models", NAME,
                   "--model-dir", str(tmp_path / "models"), "-w", str(tmp_path / "work"),
                   check=False, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 66, proc.stderr
    assert "no METER checkpoint" in proc.stderr
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_cli_finds_planted_meter_ans_in_cross_and_image_streams(tmp_path):
    """A dataset whose BOLD carries tiny-meter's cross-text AN 1/5 (voxels 0-11, from the
    image-caption pairs) and image AN 0/9 (voxels 12-23, negative): the CLI finds both."""
    import h5py

    from bids_vlm.stats.bnstore import flat_entries
    from datagen import Plant, make_planted_dataset

    plants = (Plant("cross-text", 1, 5, list(range(12)), 0.6, "tiny-meter"),
              Plant("image", 0, 9, list(range(12, 24)), -0.6, "tiny-meter"))
    data = make_planted_dataset(tmp_path / "bids", n_subjects=1, plants=plants)
    out = tmp_path / "out"
    run_cli(data.root, out, "participant", "-q", "-w", tmp_path / "work", "--models",
            "tiny-meter", "--layers", "0", "1", "--no-encoding")
    path = next((out / "sub-01" / "func").glob("*_desc-tinymeter_association.h5"))
    with h5py.File(path) as h5:
        ids = list(h5["an_id"].asstr()[()])
        flat = flat_entries(h5)
        an, vox, r = flat["an_index"], flat["voxel_index"], flat["sign"]
    assert len(ids) == 4 * 2 * 512  # 4 streams x 2 layers x 512 ANs
    noise = np.array(data.noise_voxels)
    for plant in plants:
        mine = an == ids.index(plant.an_id)
        assert set(plant.voxels) <= set(vox[mine])
        assert (np.sign(r[mine][np.isin(vox[mine], plant.voxels)]) == np.sign(plant.beta)).all()
        assert np.isin(vox[mine], noise).sum() / len(noise) <= 0.05
    maps = sorted(p.name for p in (out / "sub-01" / "func").glob("*CrossText01_stat-r_*"))
    assert maps and all("-" not in p.split("_")[3][5:] for p in maps)
