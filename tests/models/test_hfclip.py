"""Hugging Face transformers CLIP: a tiny CLIPModel saved by the test (weights, image processor
and a CLIP tokenizer written from open_clip's BPE vocabulary) loads from its directory, gives
the documented shapes and the same ANs as a hook-free computation; a missing model is a clear
error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_vlm.config import ModelConfig
from bids_vlm.errors import WeightsNotFoundError
from bids_vlm.models import extract, load_model
from bids_vlm.models.base import ModelAdapter, hooks_attached
from datagen import make_images
from weights import write_tiny_hf_clip

TEXTS = ["a photo of a face", "a house by the sea"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_tiny_hf_clip(tmp_path_factory.mktemp("hfclip"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stim")
    return [str(folder / n) for n in make_images(folder, n=2)]


def test_loads_from_a_directory_with_documented_shapes(hf_dir, images):
    model = load_model(f"hf-clip:{hf_dir}", ModelConfig())
    assert isinstance(model, ModelAdapter) and model.forward_key("text") == "text"
    assert {s: (v.n_layers, v.width) for s, v in model.streams.items()} == \
        {"image": (3, 128), "text": (3, 128)}
    acts = extract(model, {"image": images, "text": TEXTS}, ModelConfig(), progress=False)
    assert sorted(acts) == [f"{s}/{i:02d}" for s in ("image", "text") for i in range(3)]
    assert all(a.shape == (2, 128) for a in acts.values())
    attn = extract(model, {"text": TEXTS}, ModelConfig(an_kind="attn"), progress=False)
    assert attn["text/02"].shape == (2, 64) and hooks_attached(model.module) == 0


def test_image_ans_match_hook_free_forward(hf_dir, images):
    model = load_model(f"hf-clip:{hf_dir}", ModelConfig())
    pixels, _, _ = model.prepare("image", images, "cpu")
    vision = model.module.vision_model
    with torch.no_grad():
        hidden = vision.pre_layrnorm(vision.embeddings(pixels))
        layer = vision.encoder.layers[0]
        attn_out = layer.self_attn(hidden_states=layer.layer_norm1(hidden))[0]
        hidden = hidden + attn_out
        layer1 = vision.encoder.layers[1]
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        attn_out = layer1.self_attn(hidden_states=layer1.layer_norm1(hidden))[0]
        hidden = hidden + attn_out
        units = layer1.mlp.activation_fn(layer1.mlp.fc1(layer1.layer_norm2(hidden)))
    got = extract(model, {"image": images}, ModelConfig(layers=(1,)), progress=False)["image/01"]
    np.testing.assert_allclose(got, units.mean(1).numpy(), rtol=1e-4, atol=1e-5)


def test_text_pooling_uses_the_attention_mask(hf_dir):
    model = load_model(f"hf-clip:{hf_dir}", ModelConfig())
    both = extract(model, {"text": TEXTS}, ModelConfig(), progress=False)["text/02"]
    alone = extract(model, {"text": TEXTS[:1]}, ModelConfig(), progress=False)["text/02"]
    np.testing.assert_allclose(both[0], alone[0], rtol=1e-4, atol=1e-5)  # padding ignored


def test_hooks_removed_after_exception(hf_dir, images, monkeypatch):
    model = load_model(f"hf-clip:{hf_dir}", ModelConfig())
    original = model.module.get_image_features

    def broken(**kwargs):
        original(**kwargs)  # the hooks fire, then the forward pass fails
        assert hooks_attached(model.module) == 3
        raise RuntimeError("boom")

    monkeypatch.setattr(model.module, "get_image_features", broken)
    with pytest.raises(RuntimeError, match="boom"):
        extract(model, {"image": images}, ModelConfig(), progress=False)
    assert hooks_attached(model.module) == 0


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="does not download at run time"):
        load_model("hf-clip:nobody/no-such-clip", ModelConfig())


@pytest.mark.parametrize("payload", ["torchscript", "pth", "pickle"])
def test_a_weight_file_that_runs_code_is_refused(hf_dir, tmp_path, live_payloads, payload):
    """A folder with config.json and a malicious pytorch_model.bin (TorchScript, or a pickle
    calling exec): UnsafeCheckpointError (exit 64) naming the file before transformers reads
    it, and no file written."""
    import shutil

    from weights import write_payload

    from bids_vlm.errors import UnsafeCheckpointError

    folder, site_dir, marker = tmp_path / "clip", tmp_path / "site-packages", tmp_path / "ran"
    folder.mkdir()
    site_dir.mkdir()
    shutil.copy(hf_dir / "config.json", folder)
    path = folder / "pytorch_model.bin"
    write_payload(path, payload, site_dir, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(f"hf-clip:{folder}", ModelConfig())
    assert str(info.value).startswith(f"{path}: ") and info.value.exit_code == 64
    assert not marker.exists() and list(site_dir.iterdir()) == []


def test_a_torch_saved_bin_still_loads(hf_dir, tmp_path):
    """pytorch_model.bin written by torch.save (the pre-safetensors format) passes the checks."""
    import shutil

    from transformers import CLIPModel

    folder = tmp_path / "bin"
    shutil.copytree(hf_dir, folder)
    module = CLIPModel.from_pretrained(hf_dir)
    (folder / "model.safetensors").unlink()
    torch.save(module.state_dict(), folder / "pytorch_model.bin")
    model = load_model(f"hf-clip:{folder}", ModelConfig())
    assert torch.equal(model.module.text_projection.weight, module.text_projection.weight)


def test_shards_named_by_the_index_are_checked_and_other_files_left(hf_dir, tmp_path,
                                                                    live_payloads):
    """transformers loads the shards pytorch_model.bin.index.json names (any name, any
    subfolder): each is checked; a shard outside the folder is refused; a training_args.bin
    that transformers never reads does not stop the run."""
    import json
    import shutil

    from weights import write_payload

    from bids_vlm.errors import UnsafeCheckpointError
    from bids_vlm.models.hfclip import check_weight_files

    folder, site_dir, marker = tmp_path / "clip", tmp_path / "site-packages", tmp_path / "ran"
    shutil.copytree(hf_dir, folder)
    site_dir.mkdir()
    write_payload(folder / "training_args.bin", "pickle", site_dir, marker)
    check_weight_files(folder)  # not a file transformers loads
    (folder / "shards").mkdir()
    shard = folder / "shards" / "weights-a"
    write_payload(shard, "torchscript", site_dir, marker)
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "shards/weights-a"}}))
    with pytest.raises(UnsafeCheckpointError) as info:
        check_weight_files(folder)
    assert str(info.value).startswith(f"{shard.resolve()}: a TorchScript archive")
    index.write_text(json.dumps({"weight_map": {"w": "../../elsewhere.bin"}}))
    with pytest.raises(UnsafeCheckpointError, match="outside the model folder"):
        check_weight_files(folder)
    assert not marker.exists()
