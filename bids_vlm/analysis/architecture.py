"""Architecture comparison (docs/METHOD.md 8): the modality specificity index (MSI) of ANs across
models, streams and layers, and the overlap of the BN maps of paired streams (image vs text,
cross-image vs cross-text) at each relative depth.

Models differ in depth (CLIP ViT-B: 12 image and 12 text layers; METER: 11 image, 12 text and 6
cross-modal layers), so layers are compared by their relative depth ``layer / (n_layers - 1)``
(:func:`bids_vlm.analysis.hierarchy.relative_depth`: the first layer of every stream is at
depth 0, the last at 1; a single-layer stream has none).

All functions are pure, over per-AN tables (one row per AN: model, stream, layer, msi, has_bn)
and the significant entries (an_index, voxel_index) of one model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bids_vlm.analysis.hierarchy import relative_depth

# stream pairs whose BN maps are compared: the two single-modality encoders, and METER's two
# cross-modal branches
STREAM_PAIRS = (("image", "text"), ("cross-image", "cross-text"))
STREAM_ORDER = ("image", "text", "cross-image", "cross-text")
MSI_THRESHOLD = 0.5
MSI_COLUMNS = ["model", "stream", "layer", "n_layers", "relative_depth", "n_ans",
               "n_ans_with_bn", "n_ans_with_msi", "mean_msi", "median_msi", "q1_msi", "q3_msi",
               "min_msi", "max_msi", "share_visual", "share_language"]
OVERLAP_COLUMNS = ["model", "stream_a", "stream_b", "layer_a", "layer_b", "relative_depth_a",
                   "relative_depth_b", "relative_depth", "n_voxels", "n_bn_a", "n_bn_b",
                   "n_bn_both", "jaccard", "dice", "chance_jaccard"]


def msi_summary(ans: pd.DataFrame, n_layers: dict, threshold: float = MSI_THRESHOLD
                ) -> pd.DataFrame:
    """Distribution of the MSI per model, stream and layer.

    ans: one row per AN with ``model``, ``stream``, ``layer``, ``msi`` (NaN where the AN has no
    BN in the visual or language network) and ``has_bn`` (bool, at least one BN anywhere).
    n_layers: {(model, stream): layers of the stream in the model} (for the relative depth).
    Returns one row per (model, stream, layer) (models in the order they first appear in
    ``ans``, streams in :data:`STREAM_ORDER`, then by name, layers ascending) with
    :data:`MSI_COLUMNS`: the number of ANs, of ANs with a BN and with an MSI, the mean, median,
    quartiles, minimum and maximum of the MSI and the shares of the ANs with an MSI that are
    visual (MSI > ``threshold``) and language specific (MSI < -``threshold``); statistics of
    layers without any MSI are NaN.
    """
    rows = []
    for (model, stream, layer), group in ans.groupby(["model", "stream", "layer"], sort=False):
        msi = group["msi"].to_numpy(float)
        msi = msi[np.isfinite(msi)]
        depth = n_layers[(model, stream)]
        row = {"model": model, "stream": stream, "layer": int(layer), "n_layers": int(depth),
               "relative_depth": float(relative_depth(layer, depth)), "n_ans": len(group),
               "n_ans_with_bn": int(group["has_bn"].sum()), "n_ans_with_msi": len(msi)}
        if len(msi):
            q1, median, q3 = np.percentile(msi, [25, 50, 75])
            row.update(mean_msi=msi.mean(), median_msi=median, q1_msi=q1, q3_msi=q3,
                       min_msi=msi.min(), max_msi=msi.max(),
                       share_visual=float((msi > threshold).mean()),
                       share_language=float((msi < -threshold).mean()))
        rows.append(row)
    out = pd.DataFrame(rows, columns=MSI_COLUMNS)
    models = {m: i for i, m in enumerate(dict.fromkeys(ans["model"]))}
    order = sorted(range(len(out)), key=lambda i: (models[out.model[i]],
                                                   stream_rank(out.stream[i]), out.layer[i]))
    return out.iloc[order].reset_index(drop=True)


def stream_rank(stream: str) -> tuple:
    """Sort key of a stream: :data:`STREAM_ORDER` first, then others by name."""
    return (STREAM_ORDER.index(stream), "") if stream in STREAM_ORDER else \
        (len(STREAM_ORDER), stream)


def union_bn_maps(an_stream, an_layer, an_index, voxel_index, n_vox: int) -> dict:
    """{(stream, layer): (n_vox,) bool}: the voxels that are a BN (either sign) of at least one
    AN of the stream's layer.

    an_stream, an_layer: (N,) the stream and layer of each AN; an_index, voxel_index: (E,) the
    significant entries. Every (stream, layer) of the ANs gets a map, empty when it has no BN.
    """
    an_stream, an_layer = np.asarray(an_stream), np.asarray(an_layer).astype(int)
    an_index, voxel_index = np.asarray(an_index, int), np.asarray(voxel_index, int)
    maps = {}
    for stream, layer in dict.fromkeys(zip(an_stream.tolist(), an_layer.tolist())):
        mine = (an_stream == stream) & (an_layer == layer)
        hit = np.zeros(n_vox, bool)
        hit[voxel_index[mine[an_index]]] = True
        maps[(stream, layer)] = hit
    return maps


def map_overlap(a: np.ndarray, b: np.ndarray) -> dict:
    """Overlap of two (V,) bool maps: sizes, Jaccard |a & b| / |a | b|, Dice 2|a & b| / (|a| +
    |b|) (both 0 when the maps are empty), and the chance Jaccard of maps of these sizes placed
    independently at random (expected intersection |a||b| / V over the expected union)."""
    n_a, n_b, both = int(a.sum()), int(b.sum()), int((a & b).sum())
    union = n_a + n_b - both
    expected = n_a * n_b / len(a) if len(a) else 0.0
    chance_union = n_a + n_b - expected
    return {"n_voxels": len(a), "n_bn_a": n_a, "n_bn_b": n_b, "n_bn_both": both,
            "jaccard": both / union if union else 0.0,
            "dice": 2 * both / (n_a + n_b) if n_a + n_b else 0.0,
            "chance_jaccard": expected / chance_union if chance_union > 0 else 0.0}


def pair_layers(layers_a, n_a: int, layers_b, n_b: int) -> list[tuple[int, int]]:
    """Layers of two streams at the same relative depth: [(layer_a, layer_b)].

    With equal layer counts, equal indices are paired (also for single-layer streams, which
    have no relative depth). Otherwise each layer of the stream with fewer layers is paired
    with the layer of the other stream nearest in relative depth, when that one is within half
    a layer of the shallower stream (1 / (2 (n - 1))); a single-layer stream beside a deeper
    one gets no pair. layers_a, layers_b: the analysed layer indices; n_a, n_b: the streams'
    layer counts.
    """
    if n_a == n_b:
        return [(k, k) for k in sorted({int(k) for k in layers_a} & {int(k) for k in layers_b})]
    swap = n_b < n_a
    (coarse, n_c), (fine, n_f) = ((layers_b, n_b), (layers_a, n_a)) if swap else \
        ((layers_a, n_a), (layers_b, n_b))
    if n_c < 2:  # a single layer (beside a deeper stream) has no relative depth to match
        return []
    fine = np.asarray(sorted(fine), int)
    pairs = []
    for layer in sorted(coarse):
        if not len(fine):
            break
        gap = np.abs(relative_depth(fine, n_f) - relative_depth(layer, n_c))
        best = int(np.argmin(gap))
        if gap[best] <= 0.5 / (n_c - 1) + 1e-12:
            pairs.append((int(fine[best]), int(layer)) if swap else (int(layer), int(fine[best])))
    return pairs


def stream_overlap(maps: dict, n_layers: dict, model: str = "",
                   pairs=STREAM_PAIRS) -> pd.DataFrame:
    """Overlap of the union BN maps of paired streams at each relative depth.

    maps: {(stream, layer): (V,) bool} (:func:`union_bn_maps`); n_layers: {stream: layers of
    the stream in the model}. For every pair in ``pairs`` whose two streams are both present,
    one row per pair of layers at the same depth (:func:`pair_layers`) with
    :data:`OVERLAP_COLUMNS`; relative_depth is the mean of the two layers' depths.
    """
    rows = []
    for stream_a, stream_b in pairs:
        layers_a = [k for s, k in maps if s == stream_a]
        layers_b = [k for s, k in maps if s == stream_b]
        if not layers_a or not layers_b:
            continue
        n_a, n_b = n_layers[stream_a], n_layers[stream_b]
        for layer_a, layer_b in pair_layers(layers_a, n_a, layers_b, n_b):
            depth_a = float(relative_depth(layer_a, n_a))
            depth_b = float(relative_depth(layer_b, n_b))
            rows.append({"model": model, "stream_a": stream_a, "stream_b": stream_b,
                         "layer_a": layer_a, "layer_b": layer_b, "relative_depth_a": depth_a,
                         "relative_depth_b": depth_b, "relative_depth": (depth_a + depth_b) / 2,
                         **map_overlap(maps[(stream_a, layer_a)], maps[(stream_b, layer_b)])})
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)
