"""Layer-wise ridge encoding: held-out r near the known ceiling, agreement with scikit-learn,
the cross-validation splits, the preferred layer."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV as SkRidgeCV

from bids_vlm.encoding.ridge import (encode_layer, heldout_scores, inner_splits, preferred_layer,
                                     run_splits)

RUNS = [150, 150, 150, 150]


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((sum(RUNS), 40))
    weights = rng.standard_normal((40, 200)) / np.sqrt(40)
    weights[:, 100:] = 0.0  # voxels 100..199: pure noise
    signal = x @ weights
    y = signal + rng.standard_normal(signal.shape)
    ceiling = signal.std(0) / np.sqrt(signal.std(0) ** 2 + 1.0)  # r of the true model
    return x, y, ceiling


def test_heldout_r_close_to_ceiling(planted):
    x, y, ceiling = planted
    res = encode_layer(x, y, RUNS, backend="numpy")
    gap = ceiling[:100] - res.r[:100]
    assert gap.mean() < 0.05 and np.abs(gap).max() < 0.15  # measured mean 0.036
    assert abs(res.r[100:].mean()) < 0.03 and res.r[100:].max() < 0.2
    assert (res.r2[:100] > 0.1).all() and res.r2[:100].mean() > 0.35 and res.r2[100:].max() < 0.05
    assert (res.alpha[100:] >= res.alpha[:100].max()).mean() > 0.9  # noise: strongest penalty


def test_kernel_form_when_features_outnumber_frames():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((sum(RUNS), 800))
    y = x[:, :5] @ np.ones((5, 20)) + rng.standard_normal((sum(RUNS), 20))
    res = encode_layer(x, y, RUNS, backend="numpy")
    assert res.r.mean() > 0.3


def test_matches_scikit_learn_ridgecv(planted):
    """Each held-out run's predictions of a voxel equal scikit-learn's RidgeCV fitted on the other
    runs with the same penalties and the same run-wise inner splits."""
    x, y, _ = planted
    alphas = np.logspace(-1, 7, 9)
    ours = encode_layer(x, y[:, [7, 150]], RUNS, alphas=alphas, backend="numpy",
                        keep_predictions=True)
    runs = run_splits(RUNS)
    for k, test in enumerate(runs):
        train_runs = [r for i, r in enumerate(runs) if i != k]
        train = np.concatenate(train_runs)
        for col, voxel in enumerate((7, 150)):
            sk = SkRidgeCV(alphas=alphas, cv=inner_splits(train_runs), fit_intercept=False,
                           scoring="r2").fit(x[train], y[train, voxel])
            np.testing.assert_allclose(ours.predictions[test, col], sk.predict(x[test]),
                                       rtol=1e-3, atol=1e-3)


def test_splits():
    assert [len(r) for r in run_splits([3, 4, 5])] == [3, 4, 5]
    runs = run_splits([10, 10, 10])
    inner = inner_splits(runs[:2])
    assert [len(t) for _, t in inner] == [10, 10]
    assert all(set(a).isdisjoint(b) for a, b in inner)
    single = inner_splits(runs[:1], n_contiguous=5)
    assert len(single) == 5 and sorted(np.concatenate([t for _, t in single])) == list(range(10))
    many = inner_splits(run_splits([5] * 12), max_folds=5)
    assert len(many) == 5
    with pytest.raises(ValueError, match="at least 2 runs"):
        encode_layer(np.zeros((10, 2)), np.zeros((10, 3)), [10])


def test_heldout_scores_and_preferred_layer():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((40, 3))
    runs = run_splits([20, 20])
    r, r2 = heldout_scores(y.copy(), y, runs)
    assert np.allclose(r, 1.0) and np.allclose(r2, 1.0)
    scores = np.array([[0.1, -0.2, 0.3], [0.2, -0.1, 0.1]])
    assert preferred_layer(scores, [4, 7]).tolist() == [7, -1, 4]


def test_banded_ridge_splits_variance_between_streams():
    from bids_vlm.encoding.ridge import encode_banded

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
