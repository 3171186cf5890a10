"""Per-layer summaries checked against hand-computed values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_vlm.analysis.summaries import (jaccard_matrix, layer_jaccard, layer_table,
                                         modality_specificity, polarity_curves)


def test_jaccard_by_hand():
    # AN 0: voxels {0,1,2}; AN 1: {1,2,3,4}; AN 2: {}; AN 3: {0,1,2}
    an = np.array([0, 0, 0, 1, 1, 1, 1, 3, 3, 3])
    vox = np.array([0, 1, 2, 1, 2, 3, 4, 0, 1, 2])
    jac = jaccard_matrix(an, vox, np.array([0, 1, 2, 3]), n_vox=6)
    assert jac[0, 1] == pytest.approx(2 / 5) and jac[1, 0] == pytest.approx(2 / 5)
    assert jac[0, 3] == 1.0 and jac[0, 2] == 0.0 and jac[2, 2] == 0.0


def test_layer_jaccard_within_and_across():
    table = pd.DataFrame({"stream": "image", "layer": [0, 0, 1, 1],
                          "n_bn_pos": [3, 4, 3, 2], "n_bn_neg": [0, 0, 0, 0]})
    an = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3])
    vox = np.array([0, 1, 2, 1, 2, 3, 4, 0, 1, 2, 8, 9])
    res = layer_jaccard(table, an, vox, n_vox=10).set_index(["layer_a", "layer_b"])
    assert res.loc[(0, 0), "mean_jaccard"] == pytest.approx(2 / 5)   # ANs 0 and 1
    assert res.loc[(1, 1), "mean_jaccard"] == pytest.approx(0.0)     # ANs 2 and 3
    # across: J(0,2)=1, J(0,3)=0, J(1,2)=2/5, J(1,3)=0 -> 1.4 / 4
    assert res.loc[(0, 1), "mean_jaccard"] == pytest.approx(0.35)


def test_polarity_mirrored_trend_has_negative_correlation():
    layers = np.repeat(np.arange(6), 10)
    table = pd.DataFrame({"stream": "text", "layer": layers,
                          "n_bn_pos": 10 + 5 * layers, "n_bn_neg": 40 - 5 * layers})
    res = polarity_curves(table)["text"]
    assert res["P"] == [10, 15, 20, 25, 30, 35] and res["N"][0] == 40
    assert res["r"] == pytest.approx(-1.0)
    assert res["p"] == pytest.approx(2 / 720)  # exact: 2 of the 6! orders are as extreme
    flat = polarity_curves(table.assign(n_bn_neg=np.tile([3, 9, 1, 7, 5, 2], 10)))["text"]
    assert abs(flat["r"]) < 0.9 and flat["p"] > 0.05


def test_modality_specificity_and_layer_table():
    table = pd.DataFrame({"stream": ["image", "image", "text"], "layer": [0, 0, 0],
                          "n_bn_pos": [4, 0, 2], "n_bn_neg": [0, 0, 2]})
    nets = pd.DataFrame({"frac_Visual": [0.75, 0.0, 0.0], "frac_Language": [0.25, 0.0, 0.5],
                         "q_Visual": [0.01, 1, 1], "q_Language": [0.5, 1, 0.01],
                         "drives": ["Visual", "n/a", "Language"]})
    msi = modality_specificity(nets)
    assert msi[0] == pytest.approx(0.5) and np.isnan(msi[1]) and msi[2] == pytest.approx(-1)
    layers = layer_table(table, nets).set_index("stream")
    assert layers.loc["image", "n_ans"] == 2 and layers.loc["image", "n_ans_with_bn"] == 1
    assert layers.loc["image", "share_driving_Visual"] == 0.5
    assert layers.loc["text", "share_driving_Language"] == 1.0
    assert layers.loc["image", "mean_msi"] == pytest.approx(0.5)


def test_image_text_overlap_by_hand():
    from bids_vlm.derivatives.summaries import stream_overlap

    table = pd.DataFrame({"stream": ["image", "image", "text", "text"], "layer": [0, 1, 0, 1],
                          "n_bn_pos": [1, 1, 1, 1], "n_bn_neg": [0, 0, 0, 0]})
    entries = {"an_index": np.array([0, 0, 2, 2, 1, 3]),
               "voxel_index": np.array([0, 1, 1, 2, 5, 6])}
    layers = pd.DataFrame({"layer": [0, 1]})
    # layer 0: image {0,1}, text {1,2} -> 1/3; layer 1: image {5}, text {6} -> 0
    assert stream_overlap(table, entries, 8, layers) == pytest.approx([1 / 3, 0.0])


def _planted_layer_table(pos, neg, n_ans=3, n_frames=300, seed=0):
    """Neuron table of a simulated 6-layer stream from the real association test.

    Each layer has ``n_ans`` ANs (autocorrelated random regressors); AN a of layer k drives
    pos[k] voxels positively and neg[k] voxels negatively (its own voxels, beta 0.6, unit
    noise), and 60 voxels are noise only. The BN+ / BN- counts are those of
    :func:`bids_vlm.encoding.associate` (Bartlett-corrected z, BH per AN), layer by layer as the
    pipeline runs it."""
    from bids_vlm.encoding import associate

    rng = np.random.default_rng(seed)
    kernel = np.exp(-np.arange(6) / 2.0)
    x = np.stack([np.convolve(rng.standard_normal(n_frames + 5), kernel, "valid")
                  for _ in range(len(pos) * n_ans)], axis=1)
    signs = [(k * n_ans + a, s) for k in range(len(pos)) for a in range(n_ans)
             for s, n in ((1.0, pos[k]), (-1.0, neg[k])) for _ in range(n)]
    y = rng.standard_normal((n_frames, len(signs) + 60))
    for v, (col, sign) in enumerate(signs):
        y[:, v] += sign * 0.6 * x[:, col] / x[:, col].std()
    rows = []
    for k in range(len(pos)):
        res = associate(x[:, k * n_ans:(k + 1) * n_ans], y, q=0.05,
                        run_lengths=[n_frames // 2, n_frames - n_frames // 2])
        rows += [{"stream": "image", "layer": k, "n_bn_pos": int(res.n_pos[a]),
                  "n_bn_neg": int(res.n_neg[a])} for a in range(n_ans)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("neg, sign", [([12, 10, 8, 6, 4, 2], -1),   # mirrored: P up, N down
                                       ([1, 3, 5, 7, 9, 11], 1),     # parallel: both up
                                       (None, 0)])                   # no shared trend
def test_polarity_of_planted_associations_has_the_planted_sign(neg, sign):
    pos = [2, 4, 6, 8, 10, 12]
    if neg is None:  # N(layer) varies, but uncorrelated with P(layer) (r = -0.06 as planted)
        neg = [6, 9, 3, 10, 4, 7]
    table = _planted_layer_table(pos, neg)
    res = polarity_curves(table)["image"]
    # the planted voxels are found (BH may add a stray false positive or miss none)
    np.testing.assert_allclose(res["P"], pos, atol=1)
    np.testing.assert_allclose(res["N"], neg, atol=1)
    if sign:
        assert np.sign(res["r"]) == sign and abs(res["r"]) > 0.9
        assert res["p"] <= 4 / 720  # exact over the 720 layer orders
    else:
        assert abs(res["r"]) < 0.4 and res["p"] > 0.3
