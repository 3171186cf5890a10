"""Banded ridge (bids_vlm.encoding.banded): the variance split between streams, the layers
``--banded-layers`` selects, the kernel solver against himalaya's MultipleKernelRidgeCV and
GroupRidgeCV (the same band weights, alphas and predictions), voxel batches fitted apart."""
from __future__ import annotations

import numpy as np
import pytest

from bids_vlm.encoding.banded import (band_weights, banded_layer_keys, encode_banded,
                                      reference_split)
from bids_vlm.encoding.ridge import heldout_scores, run_splits


def test_banded_ridge_splits_variance_between_streams():
    rng = np.random.default_rng(0)
    runs = [150, 150, 150]
    a, b = rng.standard_normal((450, 30)), rng.standard_normal((450, 20))
    y = rng.standard_normal((450, 60))
    y[:, :20] += a @ rng.standard_normal((30, 20)) / np.sqrt(30)  # driven by band "image"
    y[:, 20:40] += b @ rng.standard_normal((20, 20)) / np.sqrt(20)  # driven by band "text"
    res = encode_banded({"image": a, "text": b}, y, runs, n_iter=10)
    img, txt = res.split_r2["image"], res.split_r2["text"]
    assert img[:20].mean() > 0.3 and abs(txt[:20].mean()) < 0.05  # measured 0.45 / 0.00
    assert txt[20:40].mean() > 0.3 and abs(img[20:40].mean()) < 0.05
    assert abs(img[40:].mean()) < 0.05 and abs(txt[40:].mean()) < 0.05
    np.testing.assert_allclose(img + txt, res.r2, atol=0.05)


def test_banded_layer_selection():
    shared = ["00", "01", "02", "10", "11"]
    assert banded_layer_keys(shared, ("last",)) == ["11"]
    assert banded_layer_keys(shared, ("all",)) == shared
    assert banded_layer_keys(shared, ("none",)) == []
    assert banded_layer_keys(shared, ("2", "last", "7")) == ["02", "11"]  # 7 is not shared
    assert banded_layer_keys([], ("last",)) == []


@pytest.mark.filterwarnings("ignore:Solving banded ridge is slower")
def test_banded_kernel_form_is_the_primal_model():
    """Fewer training frames than features (a film's layers): the kernel form (linear band
    kernels) chooses the band weights of the primal GroupRidgeCV and predicts the same."""
    rng = np.random.default_rng(1)
    runs = [60, 60, 60]
    latent = rng.standard_normal((180, 4))
    a = latent @ rng.standard_normal((4, 150)) + rng.standard_normal((180, 150))
    b = latent @ rng.standard_normal((4, 100)) + rng.standard_normal((180, 100))
    y = rng.standard_normal((180, 40))
    y[:, :20] += (a @ rng.standard_normal((150, 20))) / 12
    y[:, 20:] += (b @ rng.standard_normal((100, 20))) / 10
    kernel = encode_banded({"image": a, "text": b}, y, runs, n_iter=8, form="kernel")
    primal = encode_banded({"image": a, "text": b}, y, runs, n_iter=8, form="primal")
    assert kernel.r[:20].mean() > 0.3 and kernel.r[20:].mean() > 0.3
    close = np.abs(kernel.r - primal.r) < 1e-3
    assert close.mean() > 0.9  # the rest: near-ties of the inner CV in float32
    for band in ("image", "text"):
        np.testing.assert_allclose(kernel.split_r2[band][close], primal.split_r2[band][close],
                                   atol=2e-3)
    chunked = encode_banded({"image": a, "text": b}, y, runs, n_iter=8, form="primal", chunk=7)
    np.testing.assert_allclose(chunked.r, primal.r, atol=1e-5)  # voxels are fitted apart
    np.testing.assert_allclose(chunked.split_r2["text"], primal.split_r2["text"], atol=1e-5)
    with pytest.raises(ValueError, match="form must be"):
        encode_banded({"image": a, "text": b}, y, runs, form="dual")


def _film_bands(seed=1, n_vox=40, runs=(60, 60, 60)):
    """Two bands with more features than training frames sharing a latent structure, voxels
    driven by one band or the other."""
    rng = np.random.default_rng(seed)
    n = sum(runs)
    latent = rng.standard_normal((n, 4))
    a = latent @ rng.standard_normal((4, 150)) + rng.standard_normal((n, 150))
    b = latent @ rng.standard_normal((4, 100)) + rng.standard_normal((n, 100))
    y = rng.standard_normal((n, n_vox))
    half = n_vox // 2
    y[:, :half] += (a @ rng.standard_normal((150, half))) / 12
    y[:, half:] += (b @ rng.standard_normal((100, n_vox - half))) / 10
    return {"image": a, "text": b}, y, list(runs)


@pytest.mark.slow
def test_kernel_solver_is_himalayas_random_search():
    """Fold by fold, the solver's held-out split predictions are those of himalaya's
    MultipleKernelRidgeCV (precomputed linear kernels, the same inner splits, band weights
    and alphas): float32 products against float32 himalaya, so up to rounding."""
    from himalaya.scoring import r2_score_split

    bands, y, runs = _film_bands(n_vox=300)
    res = encode_banded(bands, y, runs, n_iter=8)
    split = reference_split(bands, y, runs, n_iter=8)
    r, r2 = heldout_scores(split.sum(0), y.astype(np.float32), run_splits(runs))
    assert res.r[:150].mean() > 0.3 and res.r[150:].mean() > 0.3
    np.testing.assert_allclose(res.r, r, atol=1e-4)  # measured 4e-6
    np.testing.assert_allclose(res.r2, r2, atol=1e-4)
    # the split R^2, accumulated run by run, is himalaya's r2_score_split of the whole series
    y_c = np.concatenate([y[t] - y[t].mean(0) for t in run_splits(runs)]).astype(np.float32)
    p_c = np.concatenate([split[:, t] - split[:, t].mean(1, keepdims=True)
                          for t in run_splits(runs)], axis=1)
    parts = r2_score_split(y_c, p_c)
    for i, band in enumerate(bands):
        np.testing.assert_allclose(res.split_r2[band], parts[i], atol=1e-4)


def test_voxel_batches_are_fitted_apart():
    """Each voxel's model is its own: the columns reversed (other batches) give the same
    scores, reversed."""
    bands, y, runs = _film_bands(seed=2, n_vox=700)
    res = encode_banded(bands, y, runs, n_iter=6, n_targets_batch=256)
    rev = encode_banded(bands, y[:, ::-1], runs, n_iter=6, n_targets_batch=256)
    np.testing.assert_allclose(rev.r[::-1], res.r, atol=1e-6)
    np.testing.assert_allclose(rev.split_r2["image"][::-1], res.split_r2["image"], atol=1e-6)


def test_band_weights_are_himalayas_draws():
    g = band_weights(20, 2, seed=0)
    assert g.shape == (20, 2) and np.allclose(g.sum(1), 1.0) and np.allclose(g[0], 0.5)
    assert np.array_equal(g, band_weights(20, 2, seed=0))
    assert not np.array_equal(g[1:], band_weights(20, 2, seed=1)[1:])


def test_banded_needs_two_runs():
    bands, y, _ = _film_bands()
    with pytest.raises(ValueError, match="at least 2 runs"):
        encode_banded(bands, y, [180])
