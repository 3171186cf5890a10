"""Architecture comparison (bids_vlm/analysis/architecture.py): MSI distribution, union BN maps,
layer pairing by relative depth and BN-map overlaps, on hand-made cases; and the group mean of
the overlaps (bids_vlm/derivatives/group/architecture.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_vlm.analysis.architecture import (
    OVERLAP_COLUMNS,
    map_overlap,
    msi_summary,
    pair_layers,
    stream_overlap,
    union_bn_maps,
)
from bids_vlm.analysis.hierarchy import relative_depth
from bids_vlm.analysis.group import group_overlap


def _map(n, voxels):
    hit = np.zeros(n, bool)
    hit[voxels] = True
    return hit


def test_map_overlap_known_values():
    a, b = _map(10, [0, 1, 2, 3]), _map(10, [2, 3, 4])
    res = map_overlap(a, b)
    assert (res["n_bn_a"], res["n_bn_b"], res["n_bn_both"], res["n_voxels"]) == (4, 3, 2, 10)
    assert res["jaccard"] == pytest.approx(2 / 5)
    assert res["dice"] == pytest.approx(4 / 7)
    assert res["chance_jaccard"] == pytest.approx(1.2 / (7 - 1.2))  # E|a & b| = 4 * 3 / 10
    same = map_overlap(a, a)
    assert same["jaccard"] == same["dice"] == 1.0
    assert map_overlap(a, _map(10, [7, 8]))["jaccard"] == 0.0
    empty = map_overlap(_map(10, []), _map(10, []))
    assert empty["jaccard"] == empty["dice"] == empty["chance_jaccard"] == 0.0


def test_union_bn_maps_of_hand_made_entries():
    # ANs: 0, 1 image layer 0; 2 text layer 0; 3 text layer 1; 4 text layer 2 (no BN)
    stream = ["image", "image", "text", "text", "text"]
    layer = [0, 0, 0, 1, 2]
    an_index = [0, 0, 1, 1, 2, 2, 3]
    voxel_index = [0, 1, 1, 2, 2, 3, 5]
    maps = union_bn_maps(stream, layer, an_index, voxel_index, 6)
    assert set(maps) == {("image", 0), ("text", 0), ("text", 1), ("text", 2)}
    assert np.flatnonzero(maps[("image", 0)]).tolist() == [0, 1, 2]
    assert np.flatnonzero(maps[("text", 0)]).tolist() == [2, 3]
    assert np.flatnonzero(maps[("text", 1)]).tolist() == [5]
    assert not maps[("text", 2)].any()


def test_pair_layers_by_relative_depth():
    assert pair_layers([0, 1, 5], 12, [0, 1, 6], 12) == [(0, 0), (1, 1)]  # equal depths only
    meter = pair_layers(range(11), 11, range(12), 12)  # METER: 11 image vs 12 text layers
    assert len(meter) == 11 and meter[0] == (0, 0) and meter[-1] == (10, 11)
    for a, b in meter:  # depths k / 10 and j / 11: within half a layer of a, 0.5 / 10
        assert abs(relative_depth(a, 11) - relative_depth(b, 12)) <= 0.5 / 10
    # a 6-layer stream as b (depths k / 5): the 12-layer stream's layer j nearest 11 k / 5
    # (0, 2.2, 4.4, 6.6, 8.8, 11)
    assert pair_layers(range(12), 12, range(6), 6) == [(0, 0), (2, 1), (4, 2), (7, 3), (9, 4),
                                                       (11, 5)]
    assert pair_layers([0], 12, [5], 6) == []  # no layer of a analysed near depth 1
    assert pair_layers([], 4, [0], 4) == []
    assert pair_layers([0], 1, [0], 1) == [(0, 0)]  # single layers: paired by index
    assert pair_layers([0], 1, range(4), 4) == []  # a single layer has no depth to match


def test_stream_overlap_pairs_streams_at_each_depth():
    n = 8
    maps = {("image", 0): _map(n, [0, 1, 2, 3]), ("image", 1): _map(n, [4]),
            ("text", 1): _map(n, [2, 3, 4]), ("text", 3): _map(n, [4, 5]),
            ("text", 0): _map(n, [0]),
            ("cross-image", 0): _map(n, [6, 7]), ("cross-text", 0): _map(n, [7])}
    layers = {"image": 2, "text": 4, "cross-image": 1, "cross-text": 1}
    table = stream_overlap(maps, layers, "m")
    assert list(table.columns) == OVERLAP_COLUMNS
    rows = table.set_index(["stream_a", "layer_a"])
    # image layer 0 (depth 0) meets text layer 0 (0/3); image layer 1 (depth 1) text layer 3
    assert rows.loc[("image", 0), "layer_b"] == 0 and rows.loc[("image", 1), "layer_b"] == 3
    assert rows.loc[("image", 0), "jaccard"] == pytest.approx(1 / 4)  # {0..3} vs {0}
    assert rows.loc[("image", 0), "dice"] == pytest.approx(2 / 5)
    assert rows.loc[("image", 0), "relative_depth"] == 0.0
    assert rows.loc[("image", 1), "jaccard"] == pytest.approx(1 / 2)
    assert rows.loc[("image", 1), "relative_depth"] == 1.0
    assert rows.loc[("cross-image", 0), "stream_b"] == "cross-text"
    assert rows.loc[("cross-image", 0), "jaccard"] == pytest.approx(1 / 2)
    assert np.isnan(rows.loc[("cross-image", 0), "relative_depth"])  # single-layer streams
    assert len(table) == 3 and (table.model == "m").all()
    clip_only = {k: v for k, v in maps.items() if not k[0].startswith("cross")}
    assert set(stream_overlap(clip_only, layers, "m").stream_a) == {"image"}


def test_msi_summary_known_values():
    ans = pd.DataFrame({
        "model": "m", "stream": ["text"] * 2 + ["image"] * 5,
        "layer": [0, 0, 1, 1, 1, 1, 1],
        "msi": [np.nan, np.nan, 1.0, 0.6, -0.2, np.nan, np.nan],
        # an AN with BNs outside both networks has no index but counts as with a BN
        "has_bn": [False, True, True, True, True, True, False]})
    table = msi_summary(ans, {("m", "image"): 12, ("m", "text"): 4})
    assert table.stream.tolist() == ["image", "text"]  # image before text
    image = table.iloc[0]
    assert (image.n_ans, image.n_ans_with_bn, image.n_ans_with_msi) == (5, 4, 3)
    assert image.mean_msi == pytest.approx(1.4 / 3)
    assert image.median_msi == pytest.approx(0.6)
    assert (image.q1_msi, image.q3_msi) == (pytest.approx(0.2), pytest.approx(0.8))
    assert (image.min_msi, image.max_msi) == (pytest.approx(-0.2), 1.0)
    assert image.share_visual == pytest.approx(2 / 3) and image.share_language == 0
    assert image.relative_depth == pytest.approx(1 / 11) and image.n_layers == 12
    text = table.iloc[1]
    assert (text.n_ans, text.n_ans_with_bn, text.n_ans_with_msi) == (2, 1, 0)
    assert np.isnan(text.mean_msi) and np.isnan(text.share_visual)
    assert text.relative_depth == 0.0  # layer 0: the first


def test_msi_summary_models_in_order_of_appearance():
    ans = pd.DataFrame({"model": ["b", "a", "b"], "stream": ["image", "image", "text"],
                        "layer": [0, 0, 0], "msi": [-1.0, 1.0, -0.6], "has_bn": True})
    table = msi_summary(ans, {("a", "image"): 1, ("b", "image"): 1, ("b", "text"): 1})
    assert list(zip(table.model, table.stream)) == [("b", "image"), ("b", "text"),
                                                    ("a", "image")]
    assert table.share_language.tolist() == [1.0, 1.0, 0.0]


def test_group_overlap_averages_sessions_then_participants():
    def table(jaccard, both):
        return pd.DataFrame({"model": "m", "stream_a": "image", "stream_b": "text",
                             "layer_a": [0, 1], "layer_b": [0, 1],
                             "relative_depth_a": [0.0, 1.0], "relative_depth_b": [0.0, 1.0],
                             "relative_depth": [0.0, 1.0], "n_voxels": 10, "n_bn_a": 4,
                             "n_bn_b": 4, "n_bn_both": both, "jaccard": jaccard, "dice": 0.5,
                             "chance_jaccard": 0.1})
    out = group_overlap([("01", table([0.2, 0.4], [1, 2])), ("01", table([0.4, 0.6], [3, 4])),
                         ("02", table([0.6, 0.2], [5, 6]))])
    assert out.layer_a.tolist() == [0, 1]
    np.testing.assert_allclose(out.jaccard, [(0.3 + 0.6) / 2, (0.5 + 0.2) / 2])
    np.testing.assert_allclose(out.n_bn_both, [(2 + 5) / 2, (3 + 6) / 2])
    np.testing.assert_allclose(out.sd_jaccard, [np.std([0.3, 0.6], ddof=1),
                                                np.std([0.5, 0.2], ddof=1)])
    assert out.n_participants.tolist() == [2, 2]


def test_group_overlap_keeps_single_layer_pairs():
    """Single-layer streams pair without a relative depth (NaN); the group keeps their row."""
    def table(jaccard):
        return pd.DataFrame({"model": "m", "stream_a": "cross-image", "stream_b": "cross-text",
                             "layer_a": [0], "layer_b": [0], "relative_depth_a": [np.nan],
                             "relative_depth_b": [np.nan], "relative_depth": [np.nan],
                             "n_voxels": 10, "n_bn_a": 2, "n_bn_b": 2, "n_bn_both": 1,
                             "jaccard": jaccard, "dice": 0.5, "chance_jaccard": 0.1})
    out = group_overlap([("01", table([0.2])), ("02", table([0.6]))])
    assert len(out) == 1 and np.isnan(out.relative_depth[0])
    assert out.jaccard[0] == pytest.approx(0.4) and out.n_participants[0] == 2
