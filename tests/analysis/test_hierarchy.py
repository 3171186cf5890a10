"""Hierarchy: relative depth of the preferred layer and its mean per network, by hand; only
voxels whose best layer is significant count."""
from __future__ import annotations

import numpy as np

from bids_vlm.analysis.hierarchy import preferred_depth, relative_depth
from bids_vlm.encoding.ridge import preferred_layer


def test_relative_depth():
    np.testing.assert_allclose(relative_depth(np.array([0, 2, 4, -1]), 5),
                               [0.0, 0.5, 1.0, np.nan])
    assert np.isnan(relative_depth(np.array([0, 0]), 1)).all()
    # scalars, as the architecture comparison uses it: CLIP's 12 layers, METER's 11 and 6
    assert relative_depth(0, 12) == 0.0 and relative_depth(11, 12) == 1.0
    assert relative_depth(1, 12) == 1 / 11 and relative_depth(5, 11) == 0.5
    assert relative_depth(2, 6) == 0.4 and np.isnan(relative_depth(0, 1))


def test_mean_preferred_depth_by_hand():
    # 6 voxels of a 5-layer stream (depth = layer / 4); voxel 4 has no preferred layer
    best = np.array([0, 4, 2, 3, -1, 1])
    masks = {"A": np.array([1, 1, 0, 0, 1, 0], bool),   # layers 0, 4 (and none): depths 0, 1
             "B": np.array([0, 0, 1, 1, 0, 1], bool),   # layers 2, 3, 1: depths .5, .75, .25
             "C": np.array([0, 0, 0, 0, 1, 0], bool),   # no preferred layer
             "D": np.zeros(6, bool)}
    table = preferred_depth(best, 5, masks).set_index("network")
    assert table.n_voxels.tolist() == [3, 3, 1, 0]
    assert table.n_voxels_with_layer.tolist() == [2, 3, 0, 0]
    assert table.loc["A", "mean_preferred_layer"] == 2.0
    assert table.loc["A", "mean_preferred_depth"] == 0.5
    assert table.loc["A", "sd_preferred_depth"] == 0.5
    assert np.isclose(table.loc["B", "mean_preferred_depth"], 0.5)
    assert np.isclose(table.loc["B", "sd_preferred_depth"], np.std([0.5, 0.75, 0.25]))
    assert table.loc[["C", "D"], "mean_preferred_depth"].isna().all()


def test_only_voxels_with_a_significant_best_layer_count():
    """Network A: 300 voxels predicted by layer 3 of 5 (z about 6); network B: 700 null voxels
    (z standard normal, r following it). With r > 0 as the rule nearly all of B's voxels get a
    preferred layer (noise, spread over every depth); with the significance test at most
    q + 3 binomial SE of them do, and all of A's voxels get layer 3 (depth 3 / 4)."""
    rng = np.random.default_rng(4)
    n_a, n_vox = 300, 1000
    z = rng.standard_normal((5, n_vox))
    z[3, :n_a] += 6.0
    scores = z / np.sqrt(200.0)  # r of about 200 effective frames: same ranking as z
    masks = {"A": np.arange(n_vox) < n_a, "B": np.arange(n_vox) >= n_a}
    old = preferred_depth(preferred_layer(scores, range(5)), 5, masks).set_index("network")
    assert old.loc["B", "n_voxels_with_layer"] > 0.9 * 700  # 1 - 0.5^5 of them
    best = preferred_layer(scores, range(5), z, q=0.05)
    table = preferred_depth(best, 5, masks).set_index("network")
    assert table.loc["A", "n_voxels_with_layer"] == n_a
    assert table.loc["A", "mean_preferred_depth"] == 0.75
    assert table.loc["B", "n_voxels_with_layer"] <= 0.05 * 700 + 3 * np.sqrt(0.05 * 0.95 * 700)
