"""Models and artificial neurons: tiny-clip shapes, hook-free recomputation, hook removal,
two-tower encoding, and local-weights loading for real open_clip names."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import run_cli
from datagen import make_images

from bids_vlm.config import ModelConfig
from bids_vlm.errors import DataError, WeightsNotFoundError
from bids_vlm.models import REGISTRY, an_ids, extract, load_model, select_layers
from bids_vlm.models.base import ModelAdapter, hooks_attached, pool_tokens
from bids_vlm.models.openclip import find_weights, load_openai_clip

TEXTS = ["a photo of a face", "a photo of a house", "a small red chair"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-clip", ModelConfig())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stim")
    return [str(folder / n) for n in make_images(folder, n=3)]


def test_every_adapter_follows_the_protocol(tiny):
    """tiny-clip (open_clip) and tiny-meter here; a transformers CLIP in test_hfclip."""
    meter = load_model("tiny-meter", ModelConfig())
    for model in (tiny, meter):
        assert isinstance(model, ModelAdapter)
        assert all(model.forward_key(s) for s in model.streams)
    assert meter.forward_key("cross-image") == meter.forward_key("cross-text") == "pair"
    assert tiny.forward_key("image") != tiny.forward_key("text")
    assert not isinstance(object(), ModelAdapter)


def test_tiny_clip_shapes(tiny, images):
    acts = extract(tiny, {"image": images, "text": TEXTS}, ModelConfig(), progress=False)
    assert sorted(acts) == [f"{s}/{i:02d}" for s in ("image", "text") for i in range(4)]
    assert all(a.shape == (3, 256) and a.dtype == np.float32 for a in acts.values())
    assert an_ids("tiny-clip", "image/02", 256)[7] == "tiny-clip/image/02/7"


def test_seed_determines_weights(tiny, images):
    same = load_model("tiny-clip", ModelConfig(seed=0))
    other = load_model("tiny-clip", ModelConfig(seed=1))
    a, b, c = (extract(m, {"text": TEXTS}, ModelConfig(), progress=False)["text/03"]
               for m in (tiny, same, other))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def _manual_blocks(blocks, x, layer, attn_mask=None):
    """Run pre-LN residual blocks by hand (no hooks); FFN hidden units of ``layer``: (B, L, U)."""
    for i, blk in enumerate(blocks):
        x = x + blk.ls_1(blk.attention(q_x=blk.ln_1(x), attn_mask=attn_mask))
        hidden = blk.mlp.gelu(blk.mlp.c_fc(blk.ln_2(x)))
        if i == layer:
            return hidden
        x = x + blk.ls_2(blk.mlp.c_proj(hidden))
    raise IndexError(layer)


def test_image_ans_match_hook_free_forward(tiny, images):
    vis = tiny.module.visual
    pixels, _, _ = tiny.prepare("image", images, "cpu")
    with torch.no_grad():
        hidden = _manual_blocks(vis.transformer.resblocks, vis._embeds(pixels), 2)
    acts = extract(tiny, {"image": images}, ModelConfig(layers=(2,)), progress=False)
    assert list(acts) == ["image/02"]
    np.testing.assert_allclose(acts["image/02"], hidden.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    cls = extract(tiny, {"image": images}, ModelConfig(layers=(2,), pooling="cls"),
                  progress=False)["image/02"]
    np.testing.assert_allclose(cls, hidden[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_text_ans_match_hook_free_forward_over_valid_tokens(tiny):
    mod = tiny.module
    tokens = tiny.tokenizer(TEXTS)
    with torch.no_grad():
        x = mod.token_embedding(tokens) + mod.positional_embedding
        hidden = _manual_blocks(mod.transformer.resblocks, x, 1, attn_mask=mod.attn_mask)
    eot = tokens.argmax(-1)
    expected = np.stack([hidden[b, :eot[b] + 1].mean(0).numpy() for b in range(len(TEXTS))])
    maxed = np.stack([hidden[b, :eot[b] + 1].amax(0).numpy() for b in range(len(TEXTS))])
    got = extract(tiny, {"text": TEXTS}, ModelConfig(layers=(1,)), progress=False)["text/01"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    got_max = extract(tiny, {"text": TEXTS}, ModelConfig(layers=(1,), pooling="max"),
                      progress=False)["text/01"]
    np.testing.assert_allclose(got_max, maxed, rtol=1e-5, atol=1e-6)
    # padding after EOT does not leak into the mean: a text alone gives the same ANs
    alone = extract(tiny, {"text": TEXTS[:1]}, ModelConfig(layers=(1,)), progress=False)
    np.testing.assert_allclose(alone["text/01"][0], got[0], rtol=1e-5, atol=1e-6)


def test_pool_tokens_mean_ignores_invalid_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    valid = torch.tensor([[True, True, False]])
    out = pool_tokens(hidden, valid, "mean", torch.tensor([0]))
    assert out.tolist() == [[2.0, 3.0]]
    with pytest.raises(ValueError):
        pool_tokens(hidden, valid, "median", torch.tensor([0]))


def test_hooks_removed_after_exception(tiny, images, monkeypatch):
    original = tiny.module.encode_image

    def broken(pixels):
        original(pixels)  # the hooks fire, then the forward pass fails
        assert hooks_attached(tiny.module) == 4
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny.module, "encode_image", broken)
    with pytest.raises(RuntimeError, match="boom"):
        extract(tiny, {"image": images}, ModelConfig(), progress=False)
    assert hooks_attached(tiny.module) == 0


def test_streams_are_encoded_separately(tiny, images, monkeypatch):
    calls = []
    for name in ("encode_image", "encode_text", "forward"):
        fn = getattr(tiny.module, name)
        monkeypatch.setattr(tiny.module, name,
                            lambda *a, _fn=fn, _n=name, **k: (calls.append(_n), _fn(*a, **k))[1])
    extract(tiny, {"text": TEXTS}, ModelConfig(), progress=False)
    assert calls == ["encode_text"]  # no image tower, no dummy partner input
    calls.clear()
    extract(tiny, {"image": images}, ModelConfig(), progress=False)
    assert calls == ["encode_image"]


def test_layer_selection():
    assert select_layers(4, ()) == [0, 1, 2, 3]
    assert select_layers(4, (1, 3, 9)) == [1, 3]


def test_registry_lists_the_models():
    assert {"tiny-clip", "clip-vit-b-32", "clip-vit-b-16"} <= set(REGISTRY)
    assert "not a scientific model" in REGISTRY["tiny-clip"].description
    assert REGISTRY["clip-vit-b-32"].streams == {"image": (12, 3072), "text": (12, 2048)}


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BIDS_VLM_MODEL_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError) as exc:
        find_weights("clip-vit-b-32", str(tmp_path / "models"))
    msg = str(exc.value)
    assert str(tmp_path / "models" / "clip-vit-b-32") in msg
    assert "timm/vit_base_patch32_clip_224.openai" in msg and "--model-dir" in msg
    assert exc.value.exit_code == 66


@pytest.mark.slow
def test_cli_missing_weights_exits_66_fast(planted, tmp_path):
    start = time.time()
    proc = run_cli(planted.root, tmp_path / "out", "participant", "--participant-label", "01",
                   "--models", "clip-vit-b-32", "--model-dir", tmp_path / "models", "-q",
                   "-w", tmp_path / "work", check=False,
                   env={"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 66, proc.stderr
    assert "weights for clip-vit-b-32" in proc.stderr
    assert time.time() - start < 120


@pytest.mark.slow
def test_openai_clip_loads_from_local_file(tmp_path, monkeypatch):
    """A full-size ViT-B/32 checkpoint written in open_clip's file format loads from --model-dir."""
    import open_clip
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(3)
    ref = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    folder = tmp_path / "models" / "clip-vit-b-32"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              folder / "open_clip_model.safetensors")
    model = load_openai_clip("clip-vit-b-32", str(tmp_path / "models"))
    assert model.streams["image"].n_layers == 12 and model.streams["image"].width == 3072
    assert model.streams["text"].n_layers == 12 and model.streams["text"].width == 2048
    for key, value in ref.state_dict().items():
        assert torch.equal(model.module.state_dict()[key], value), key
    acts = extract(model, {"text": TEXTS[:1]}, ModelConfig(layers=(11,)), progress=False)
    assert acts["text/11"].shape == (1, 2048)


@pytest.mark.slow
def test_generic_open_clip_from_a_file_and_a_tag(tmp_path, monkeypatch):
    """open_clip:<arch>:<file> loads that file; open_clip:<arch>:<tag> loads from
    <model-dir>/<arch>-<tag>/; a tag with no local weights is exit 66's error, fast."""
    import open_clip
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("BIDS_VLM_MODEL_DIR", raising=False)
    torch.manual_seed(4)
    ref = open_clip.create_model("ViT-B-16", pretrained=None)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, tmp_path / "mine.safetensors")
    model = load_model(f"open_clip:ViT-B-16:{tmp_path / 'mine.safetensors'}", ModelConfig())
    assert model.streams["image"].n_layers == 12 and model.streams["text"].width == 2048
    assert all(torch.equal(model.module.state_dict()[k], v) for k, v in state.items())
    acts = extract(model, {"text": TEXTS[:2]}, ModelConfig(layers=(0,)), progress=False)
    assert acts["text/00"].shape == (2, 2048)
    name = "open_clip:ViT-B-16:laion2b_s34b_b88k"
    with pytest.raises(WeightsNotFoundError, match="ViT-B-16-laion2b_s34b_b88k"):
        load_model(name, ModelConfig(model_dir=str(tmp_path / "models")))
    folder = tmp_path / "models" / "ViT-B-16-laion2b_s34b_b88k"
    folder.mkdir(parents=True)
    save_file(state, folder / "open_clip_model.safetensors")
    tagged = load_model(name, ModelConfig(model_dir=str(tmp_path / "models")))
    assert torch.equal(tagged.module.visual.conv1.weight, ref.visual.conv1.weight)


def test_generic_open_clip_names_are_checked():
    from bids_vlm.models import is_model_name
    from bids_vlm.models.openclip import parse_generic

    assert is_model_name("open_clip:ViT-B-32:openai") and not is_model_name("open_clip:")
    assert parse_generic("open_clip:ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32",
                                                                    "laion2b_s34b_b79k")
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        parse_generic("open_clip:ViT-Q-99:openai")
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretrained tag"):
        parse_generic("open_clip:ViT-B-32:no_such_tag")
    with pytest.raises(ValueError, match="add a pretrained tag or a checkpoint file"):
        parse_generic("open_clip:ViT-B-32")
    assert "open_clip:<architecture>:<pretrained tag or checkpoint file>" in \
        run_cli("--list-models").stdout


def test_activation_cache(tiny, tmp_path):
    from bids_vlm.models import extract_cached

    images = [str(tmp_path / "stim" / n) for n in make_images(tmp_path / "stim", n=3)]
    tmp_path = tmp_path / "cache"
    items = {"image": images, "text": TEXTS}
    first, computed = extract_cached(tiny, items, ModelConfig(), tmp_path, progress=False)
    assert computed == 6
    again, computed = extract_cached(tiny, items, ModelConfig(), tmp_path, progress=False)
    assert computed == 0  # the second run extracts nothing
    assert all(np.array_equal(first[k], again[k]) for k in first)
    direct = extract(tiny, items, ModelConfig(), progress=False)
    assert all(np.array_equal(first[k], direct[k]) for k in first)
    # a corrupted file is recomputed
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 6
    files[0].write_bytes(b"garbage")
    _, computed = extract_cached(tiny, items, ModelConfig(), tmp_path, progress=False)
    assert computed == 1
    # a setting that changes the result, or other weights, is another cache entry
    _, computed = extract_cached(tiny, items, ModelConfig(pooling="max"), tmp_path,
                                 progress=False)
    assert computed == 6
    other = load_model("tiny-clip", ModelConfig(seed=5))
    _, computed = extract_cached(other, items, ModelConfig(), tmp_path, progress=False)
    assert computed == 6
    # a changed image file is a new stimulus
    from PIL import Image

    Image.new("RGB", (30, 30), (255, 0, 0)).save(images[0])
    _, computed = extract_cached(tiny, {"image": images}, ModelConfig(), tmp_path,
                                 progress=False)
    assert computed == 1


def test_registry_matches_the_loaded_models(tiny):
    assert {s: (v.n_layers, v.width) for s, v in tiny.streams.items()} == \
        REGISTRY["tiny-clip"].streams


def test_list_models_and_selection_errors():
    from bids_vlm.models import check_selection

    out = run_cli("--list-models").stdout
    assert "clip-vit-b-32: OpenAI CLIP ViT-B/32" in out
    assert "    image: 12 layers x 3072 ANs (ffn) = 36864 ANs" in out
    assert "    text: 4 layers x 256 ANs (ffn) = 1024 ANs" in out
    check_selection(["tiny-clip"], ["text"], [0, 3])
    with pytest.raises(ValueError, match="matches no layer of tiny-clip"):
        check_selection(["tiny-clip"], [], [4, 5])
    with pytest.raises(ValueError, match="matches no stream"):
        check_selection(["tiny-clip"], ["cross-text"], [])


def test_attn_ans_are_query_key_products(tiny, images):
    """attn ANs of image layer 1 equal q * k recomputed by hand from the block's LayerNorm
    output, mean-pooled over tokens; one AN per head dimension (width 64)."""
    vis = tiny.module.visual
    pixels, _, _ = tiny.prepare("image", images, "cpu")
    blocks = vis.transformer.resblocks
    with torch.no_grad():
        x = vis._embeds(pixels)
        x = blocks[0](x)
        h = blocks[1].ln_1(x)
        w, b = blocks[1].attn.in_proj_weight, blocks[1].attn.in_proj_bias
        q = h @ w[:64].T + b[:64]
        k = h @ w[64:128].T + b[64:128]
    got = extract(tiny, {"image": images}, ModelConfig(layers=(1,), an_kind="attn"),
                  progress=False)["image/01"]
    assert got.shape == (3, 64)
    np.testing.assert_allclose(got, (q * k).mean(1).numpy(), rtol=1e-4, atol=1e-5)
    text = extract(tiny, {"text": TEXTS}, ModelConfig(an_kind="attn"), progress=False)
    assert text["text/03"].shape == (3, 64) and hooks_attached(tiny.module) == 0
    from bids_vlm.names import an_id

    assert an_id("tiny-clip", "image", 1, 12, "attn") == "tiny-clip/image/01/qk12"


def test_half_precision_needs_cuda(tiny):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        extract(tiny, {"text": TEXTS}, ModelConfig(precision="bf16"), progress=False,
                device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_half_precision_on_cuda_is_close_to_fp32(tiny):
    full = extract(tiny, {"text": TEXTS}, ModelConfig(), progress=False, device="cuda")
    half = extract(tiny, {"text": TEXTS}, ModelConfig(precision="bf16"), progress=False,
                   device="cuda")
    for key in full:
        assert np.corrcoef(full[key].ravel(), half[key].ravel())[0, 1] > 0.99


@pytest.mark.parametrize("where, payload", [
    ("generic", "torchscript"), ("generic", "pickle"), ("model dir", "torchscript"),
    ("model dir", "pth"), ("safetensors name", "torchscript"),
])
def test_open_clip_refuses_a_checkpoint_that_runs_code(tmp_path, monkeypatch, live_payloads,
                                                       where, payload):
    """``open_clip:ViT-B-32:/path/x.pt`` and ``<model-dir>/clip-vit-b-32/`` with a TorchScript
    archive or a pickle calling exec: UnsafeCheckpointError (exit 64) naming the file, before
    torch reads it, and no file written."""
    from weights import write_payload

    from bids_vlm.errors import UnsafeCheckpointError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("BIDS_VLM_MODEL_DIR", raising=False)
    site_dir, marker = tmp_path / "site-packages", tmp_path / "ran"
    site_dir.mkdir()
    folder = tmp_path / "models" / "clip-vit-b-32"
    folder.mkdir(parents=True)
    path = {"generic": tmp_path / "x.pt", "model dir": folder / "open_clip_pytorch_model.bin",
            "safetensors name": folder / "open_clip_model.safetensors"}[where]
    write_payload(path, payload, site_dir, marker)
    name = f"open_clip:ViT-B-32:{path}" if where == "generic" else "clip-vit-b-32"
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(name, ModelConfig(model_dir=str(tmp_path / "models")))
    assert str(info.value).startswith(f"{path}: ") and info.value.exit_code == 64
    assert ("TorchScript archive" if payload != "pickle" else "builtins.exec") in str(info.value)
    assert not marker.exists() and list(site_dir.iterdir()) == []


def test_batches_prepared_ahead_keep_order_and_errors(tiny, images, tmp_path):
    """The next batch is decoded in a background thread: rows stay in item order across
    batches, and a bad file in a later batch is still the DataError naming it."""
    one_by_one = extract(tiny, {"image": images}, ModelConfig(layers=(1,)), progress=False,
                         batch_size=1)["image/01"]
    together = extract(tiny, {"image": images}, ModelConfig(layers=(1,)),
                       progress=False)["image/01"]
    assert np.allclose(one_by_one, together, atol=1e-5)
    assert not np.allclose(one_by_one[0], one_by_one[1], atol=1e-3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        extract(tiny, {"image": images + [str(bad)]}, ModelConfig(), progress=False, batch_size=2)
    assert hooks_attached(tiny.module) == 0
