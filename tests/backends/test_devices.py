"""CPU and CUDA as two backends of the heavy stages, tested as himalaya tests its backends: one
test, parametrized over the backends and the stages, runs each stage on the backend and compares
it with an independent reference computed on the CPU in float64 (or without the stage's
machinery): the AN extraction with a hook-free forward pass, the association with a dense
numpy z and BH, the leave-one-run-out ridge with himalaya's RidgeCV on its numpy backend. The
virtual lesion refits with these same association and ridge engines. The CUDA cases skip,
saying so, where no CUDA device is present (CI has none; ``benchmarks/cuda_check.sh`` runs
them on a GPU machine)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats

from bids_vlm.config import ModelConfig
from bids_vlm.encoding import ridge_solver
from bids_vlm.encoding.ridge import fold_predict, himalaya_backend, run_splits
from bids_vlm.models import extract, load_model
from bids_vlm.stats import associate
from bids_vlm.stats.association import association_z
from datagen import make_images

BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]
HIMALAYA = {"cpu": "torch", "cuda": "torch_cuda"}
# largest error allowed, relative to the reference's largest value: float32 against float64 on
# the CPU; on a GPU also cuDNN's TF32 convolutions (torch's default; ~1e-3 relative)
TOLERANCE = {"cpu": 1e-4, "cuda": 2e-3}


def _extraction(device, tmp_path):
    """(ANs of tiny-clip's image layer 2 on ``device``, the same from the blocks run by hand)."""
    tiny = load_model("tiny-clip", ModelConfig())
    images = [str(tmp_path / n) for n in make_images(tmp_path, n=3)]
    got = extract(tiny, {"image": images}, ModelConfig(layers=(2,)), progress=False,
                  device=device)["image/02"]
    vis = tiny.module.visual
    pixels, _, _ = tiny.prepare("image", images, "cpu")
    x = vis._embeds(pixels)
    with torch.no_grad():
        for i, blk in enumerate(vis.transformer.resblocks):
            x = x + blk.ls_1(blk.attention(q_x=blk.ln_1(x), attn_mask=None))
            hidden = blk.mlp.gelu(blk.mlp.c_fc(blk.ln_2(x)))
            if i == 2:
                break
            x = x + blk.ls_2(blk.mlp.c_proj(hidden))
    return got, hidden.mean(1).double().numpy()


def _association(device, tmp_path):
    """(z of the discoveries on ``device``, the dense float64 z of the same pairs), after
    checking that both find the same pairs (BH per AN at q = 0.05)."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 20)), rng.standard_normal((300, 60))
    y[:, :10] += 0.4 * x[:, [0]]
    y[:, 10:15] -= 0.3 * x[:, [5]]
    runs = [150, 150]
    z = association_z(x, y, run_lengths=runs, n_lags=12)
    sig = np.array([stats.false_discovery_control(2 * special.ndtr(-np.abs(row))) <= 0.05
                    for row in z])
    res = associate(x, y, q=0.05, block_size=7, run_lengths=runs, n_lags=12, device=device)
    assert 10 < sig.sum() < sig.size / 2
    assert set(zip(res.an_index.tolist(), res.voxel_index.tolist())) == set(zip(*np.nonzero(sig)))
    return res.z, z[res.an_index, res.voxel_index]


def _ridge(device, tmp_path):
    """(held-out predictions of fold 0 on ``device``, himalaya RidgeCV's on numpy), over the
    voxels whose chosen alpha agrees (at least 99% of them)."""
    rng = np.random.default_rng(0)
    lengths = [60, 60, 60]
    x = rng.standard_normal((180, 40))
    w = rng.standard_normal((40, 300)) * (rng.random(300) < 0.5) / np.sqrt(40)
    y = x @ w * rng.uniform(0.2, 2.0, 300) + rng.standard_normal((180, 300))
    runs, alphas = run_splits(lengths), np.logspace(-1, 7, 9)
    with himalaya_backend(HIMALAYA[device]):
        pred, alpha = fold_predict(x, y, runs, 0, alphas)
    with himalaya_backend("numpy"):
        ref_pred, ref_alpha = ridge_solver.reference_fold_predict(x, y, runs, 0, alphas)
    same = np.isclose(alpha, ref_alpha, rtol=1e-4)
    assert same.mean() >= 0.99
    return pred[:, same], np.asarray(ref_pred)[:, same]


STAGES = {"extraction": _extraction, "association": _association, "ridge": _ridge}


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_on_the_backend_equals_its_reference(stage, device, tmp_path):
    got, want = STAGES[stage](device, tmp_path)
    assert got.shape == want.shape and got.size > 0
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE[device] * np.abs(want).max())
