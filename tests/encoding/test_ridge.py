"""Layer-wise ridge encoding: held-out r near the known ceiling, agreement with scikit-learn,
the cross-validation splits, the preferred layer; the null of a held-out r (calibrated z on
simulated null sessions: AR(1) 0.6 noise, random-walk confounds and DCT cleaning) and the
significant preferred layer (calibrated under the null, the planted layer found); the progress bar
and the scores from voxel batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV as SkRidgeCV

from scipy import special

from bids_vlm.stats.autocorr import default_lags, noise_factors
from bids_vlm.encoding.folds import inner_splits, run_splits
from bids_vlm.encoding.ridge import (CROSS_FOLD, best_layer_p, bh_reject, encode_layer,
                                     heldout_scores, heldout_z, prediction_lag_terms,
                                     preferred_layer)
from bids_vlm.simulate import Design, session

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


def test_progress_bar_per_layer_quiet_with_q(planted, capsys, monkeypatch):
    """One bar per layer over its folds x voxel batches (and with shared alphas the batches of
    their choice, which come first), titled by the layer; silent when the run is quiet
    (``bids_vlm -q`` sets BIDS_VLM_QUIET=1) or progress is off."""
    x, y, _ = planted
    monkeypatch.delenv("BIDS_VLM_QUIET", raising=False)
    encode_layer(x, y, RUNS, progress=True, desc="encoding image/layer03")
    err = capsys.readouterr().err
    assert "encoding image/layer03" in err and "4/4" in err  # 4 folds x 1 batch
    encode_layer(x, y, RUNS, progress=True, desc="encoding image/layer03", alpha_cv="shared")
    err = capsys.readouterr().err
    assert "0/5" in err and "5/5" in err and "4/4" not in err  # the choice's batch, then 4
    encode_layer(x, y, RUNS, n_targets_batch=256)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("BIDS_VLM_QUIET", "1")
    encode_layer(x, y, RUNS, progress=True, desc="encoding image/layer03")
    assert capsys.readouterr().err == ""


def _scores_float64(pred, y, runs):
    """heldout_scores as it was written: each run z-scored in float64, r the mean product."""
    def z(a):
        a = a - a.mean(0)
        sd = a.std(0)
        return np.divide(a, sd, out=np.zeros_like(a), where=sd > 1e-12)

    yz = np.concatenate([z(y[r].astype(np.float64)) for r in runs])
    pz = np.concatenate([z(pred[r].astype(np.float64)) for r in runs])
    y_c = np.concatenate([y[r] - y[r].mean(0) for r in runs])
    err = np.concatenate([y[r] - pred[r] for r in runs])
    return (yz * pz).mean(0), 1.0 - (err ** 2).sum(0) / (y_c ** 2).sum(0)


def test_scores_in_batches_and_voxels_as_a_tensor(planted):
    """r and R^2 from the batches' per-run sums equal the float64 z-scored ones; voxels given
    as a torch tensor (as encode_node gives the GPU's copy) give the same result."""
    x, y, _ = planted
    runs = run_splits(RUNS)
    res = encode_layer(x, y, RUNS, keep_predictions=True, with_z=True, n_targets_batch=64)
    r, r2 = _scores_float64(res.predictions, y, runs)
    np.testing.assert_allclose(res.r, r, atol=1e-5)
    np.testing.assert_allclose(res.r2, r2, atol=1e-5)
    np.testing.assert_allclose(heldout_scores(res.predictions, y, runs), (r, r2), atol=1e-5)
    tensor = encode_layer(x, torch.from_numpy(y.astype(np.float32)), RUNS, with_z=True)
    np.testing.assert_allclose(tensor.r, res.r, atol=1e-5)
    np.testing.assert_allclose(tensor.z, res.z, atol=1e-4)
    np.testing.assert_array_equal(tensor.alpha, res.alpha)


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


# ---- the null of a held-out r and the significant preferred layer --------------------------

N_LAYERS, N_FEATURES = 4, 40  # layers of HRF-smoothed random regressors
Z05 = -special.ndtri(0.05)


def _bound(p, n, k=3.0):
    """p + k binomial standard errors of a share among n independent tests."""
    return p + k * np.sqrt(p * (1 - p) / n)


def _layers(s, n_layers=N_LAYERS, n_features=N_FEATURES, alpha_cv="nested"):
    """(n_layers, V) held-out r and z of each layer's block of the session's regressors."""
    res = [encode_layer(s.regressors[:, k * n_features:(k + 1) * n_features], s.voxels,
                        s.run_lengths, with_z=True, noise_sums=s.noise_sums,
                        lag_traces=s.lag_traces, alpha_cv=alpha_cv) for k in range(n_layers)]
    return np.array([x.r for x in res]), np.array([x.z for x in res])


@pytest.fixture(scope="module", params=[2, 3], ids=["2runs", "3runs"])
def null_layers(request):
    """Null voxels (AR(1) 0.6 noise, 12 random-walk confounds + DCT cleaning, as the pipeline
    cleans) against 4 layers of 40 HRF-smoothed random regressors: (r, z), (4, 2500) each."""
    rng = np.random.default_rng(10 + request.param)
    s = session(rng, Design(n_runs=request.param, n_frames=150), 2500,
                n_an=N_LAYERS * N_FEATURES)
    return _layers(s)


def test_heldout_variance_of_a_fixed_prediction():
    """A prediction fixed in advance (no cross-validation), scaled differently in each run:
    the z of heldout_scores' r (each run z-scored) with the exact variance is N(0, 1)."""
    rng = np.random.default_rng(20)
    n_vox = 4000  # each voxel against its own fixed cleaned HRF-smoothed series
    s = session(rng, Design(n_runs=3, n_frames=150), n_vox, n_an=n_vox)
    runs = run_splits(s.run_lengths)
    pred = s.regressors.copy()
    for run, scale in zip(runs, (1.0, 30.0, 0.02)):
        pred[run] *= scale
    r, _ = heldout_scores(pred, s.voxels, runs)
    k = default_lags(s.run_lengths)
    terms = sum(prediction_lag_terms(pred[run], k) * len(run) / len(pred) for run in runs)
    z = heldout_z(r, terms, noise_factors(s.noise_sums, s.lag_traces, k).numpy(),
                  s.lag_traces[0], cross_fold=1.0)
    fpr = (z > Z05).mean()
    assert 0.04 <= fpr <= 0.06  # measured 0.049
    assert abs(z.std() - 1.0) < 0.05


def test_heldout_z_is_calibrated_under_the_null(null_layers):
    """Leave-one-run-out held-out r of null voxels: one-sided FPR at 0.05 in [0.04, 0.06]
    (10000 tests: binomial SE 0.0022); the fold-independent variance alone (no CROSS_FOLD)
    would be anti-conservative."""
    r, z = null_layers
    fpr = (z > Z05).mean()
    assert 0.04 <= fpr <= 0.06  # measured 0.044 (2 runs), 0.044 (3 runs)
    assert (z > -special.ndtri(0.01)).mean() <= _bound(0.01, z.size)  # measured 0.006-0.008
    assert 0.93 < z.std() < 1.05 and abs(z.mean()) < 0.05
    naive = z * np.sqrt(CROSS_FOLD)  # about the z of the variance of independent folds
    assert (naive > Z05).mean() > 0.08  # measured 0.12: the folds share noise


def test_preferred_layer_under_the_null(null_layers):
    """Null voxels: with r > 0 as the rule about 94% get a preferred layer; with the test,
    at most q + 3 SE; the selection-adjusted p of the best layer is not anti-conservative."""
    r, z = null_layers
    n_vox = r.shape[1]
    assert (preferred_layer(r, range(N_LAYERS)) >= 0).mean() > 0.85  # measured 0.94
    share = (preferred_layer(r, range(N_LAYERS), z, q=0.05) >= 0).mean()
    assert share <= _bound(0.05, n_vox)  # measured 0.000
    p_best = best_layer_p(r, z)
    assert (p_best <= 0.05).mean() <= _bound(0.05, n_vox)  # measured 0.03-0.04
    assert (special.ndtr(-z[r.argmax(0), np.arange(n_vox)]) <= 0.05).mean() > 0.1  # 0.16


@pytest.mark.parametrize("n_runs, n_features, seed", [(12, 40, 2), (8, 200, 5), (2, 40, 4)],
                         ids=["12runs", "8runs-200features", "2runs"])
def test_shared_alpha_choice_is_calibrated_under_the_null(n_runs, n_features, seed):
    """--alpha-cv shared (each voxel's alpha chosen once by inner folds over every run, the
    held-out run included): null voxels as in null_layers, 4 layers x 2500 voxels, 100 frames
    per run. The one-sided FPR at 0.05 and 0.01 stays within 3 binomial SE (10000 tests:
    0.0022 and 0.0010) of the nominal level, as the nested choice's does. Measured
    (nested / shared): 12 runs 0.041 / 0.043, 8 runs x 200 features 0.043 / 0.047, 2 runs
    0.040 / 0.046 at 0.05; 0.006-0.010 at 0.01."""
    s = session(np.random.default_rng(seed), Design(n_runs=n_runs, n_frames=100), 2500,
                n_an=N_LAYERS * n_features)
    for alpha_cv in ("nested", "shared"):
        _, z = _layers(s, N_LAYERS, n_features, alpha_cv)
        assert (z > Z05).mean() <= _bound(0.05, z.size), alpha_cv
        assert (z > -special.ndtri(0.01)).mean() <= _bound(0.01, z.size), alpha_cv
        assert z.std() < 1.05 and abs(z.mean()) < 0.05  # SD 0.89-1.0: not anti-conservative


PLANTED = (4, 20, 200)  # layers, features per layer, planted voxels (of 1200)


def _planted_session(seed, design):
    """200 voxels driven by layer 2's features (r about 0.45), 1000 null voxels."""
    rng = np.random.default_rng(seed)
    n_layers, n_features, n_planted = PLANTED
    w = np.zeros((n_layers * n_features, 1200))
    w[2 * n_features:3 * n_features, :n_planted] = (
        0.6 * rng.standard_normal((n_features, n_planted)) / np.sqrt(n_features))
    return session(rng, design, 1200, n_an=n_layers * n_features, signal=lambda x: x @ w)


def test_shared_alpha_choice_finds_the_planted_layer():
    """The planted session of the next test, 6 runs: the shared choice finds the planted
    voxels' layer as often as the nested one (within 5 points), and its held-out r differs
    from the nested one's by little."""
    n_layers, n_features, n_planted = PLANTED
    s = _planted_session(31, Design(n_runs=6, n_frames=100))
    found = {}
    for alpha_cv in ("nested", "shared"):
        r, z = _layers(s, n_layers, n_features, alpha_cv)
        best = preferred_layer(r, range(n_layers), z, q=0.05)
        found[alpha_cv] = (best[:n_planted] == 2).mean()
        found[alpha_cv + " r"] = r[2, :n_planted]
    assert found["shared"] > 0.8 and found["shared"] >= found["nested"] - 0.05
    assert np.abs(found["shared r"] - found["nested r"]).mean() < 0.02


def test_preferred_layer_finds_the_planted_layer():
    """200 voxels driven by layer 2's features (r about 0.45), 1000 null voxels: most planted
    voxels get a preferred layer, nearly all of them layer 2; few null voxels get one."""
    n_layers, n_features, n_planted = PLANTED
    s = _planted_session(30, Design(n_runs=3, n_frames=200))
    r, z = _layers(s, n_layers, n_features)
    best = preferred_layer(r, range(n_layers), z, q=0.05)
    found = best[:n_planted] >= 0
    assert found.mean() > 0.8  # measured 0.93
    assert (best[:n_planted][found] == 2).mean() > 0.95  # measured 1.0
    false = (best[n_planted:] >= 0).sum()
    assert false / max(1, (best >= 0).sum()) <= _bound(0.05, (best >= 0).sum())  # 1 of 187
    assert (preferred_layer(r, range(n_layers))[n_planted:] >= 0).mean() > 0.85  # old rule


def test_prediction_lag_terms_and_heldout_z_by_hand():
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((50, 3)).astype(np.float32)
    pred[:, 1] = 7.0  # constant: no term
    pred[:, 2] = pred[:, 0] * 1e-8  # tiny: the same autocorrelations as column 0
    terms = prediction_lag_terms(pred, 4)
    assert terms[:, -1].tolist() == [1.0, 0.0, 1.0] and (terms[1] == 0).all()
    np.testing.assert_allclose(terms[2], terms[0], atol=1e-5)
    x = pred[:, 0] - pred[:, 0].mean()
    np.testing.assert_allclose(terms[0, 0], (x[1:] * x[:-1]).sum() / (x ** 2).sum(), atol=1e-5)
    # white noise and a white prediction: Var = CROSS_FOLD / n_dof
    factors = np.zeros((2, 5))
    factors[:, -1] = 1.0 / 100
    white = np.zeros((2, 5))
    white[:, -1] = 1.0
    z = heldout_z(np.array([0.3, -0.2]), white, factors, 100)
    np.testing.assert_allclose(z, np.arctanh([0.3, -0.2]) * np.sqrt(100 / CROSS_FOLD - 3),
                               rtol=1e-6)


def test_significant_preferred_layer_by_hand():
    """Best layer by r, tested by its own z: p = 3 Phi(-z) (Bonferroni over 3 layers), then
    BH across 4 voxels at 0.05 (critical 0.0125, 0.025, 0.0375, 0.05)."""
    adjusted = np.array([0.003, 0.03, 0.2, 0.015])
    scores = np.array([[0.5, 0.1, 0.1, 0.1],
                       [0.1, 0.4, 0.3, 0.1],
                       [0.2, 0.1, 0.6, 0.7]])
    z = np.zeros((3, 4))
    z[scores.argmax(0), np.arange(4)] = -special.ndtri(adjusted / 3)
    z[1, 2] = 10.0  # voxel 2: a significant layer that is not its best
    np.testing.assert_allclose(best_layer_p(scores, z), adjusted)
    assert preferred_layer(scores, [0, 5, 9], z, q=0.05).tolist() == [0, 5, -1, 9]
    assert preferred_layer(scores, [0, 5, 9], z, q=0.015).tolist() == [0, -1, -1, -1]
    assert bh_reject(np.array([0.01, 0.02, 0.03, 0.04]), 0.04).all()
    assert not bh_reject(np.array([0.02, 0.5]), 0.03).any() and not bh_reject([], 0.05).size
    z[0, 0] = np.nan
    assert best_layer_p(scores, z)[0] == 1.0


def test_null_terms_computed_once_give_each_layers_z():
    """The encoding stage computes the held-out z's null once for all layers (null_terms):
    the same z as each layer computing it from the noise sums and traces."""
    from bids_vlm.encoding.ridge import null_terms

    s = session(np.random.default_rng(21), Design(n_runs=2, n_frames=120), 300, n_an=30)
    n_lags = default_lags(s.run_lengths)
    null = null_terms(s.voxels, s.run_lengths, n_lags, s.noise_sums, s.lag_traces)
    for x in (s.regressors[:, :15], s.regressors[:, 15:]):
        each = encode_layer(x, s.voxels, s.run_lengths, with_z=True, noise_sums=s.noise_sums,
                            lag_traces=s.lag_traces)
        once = encode_layer(x, s.voxels, s.run_lengths, with_z=True, n_lags=n_lags, null=null)
        np.testing.assert_array_equal(once.z, each.z)
        np.testing.assert_array_equal(once.r, each.r)
