"""Hierarchy (docs/METHOD.md 8): the mean preferred depth of each network.

A voxel's preferred layer is the layer whose held-out encoding r is highest there, kept only
where that r is significant (its one-sided p under the held-out r's null, times the number of
layers, passes Benjamini-Hochberg across voxels; -1 elsewhere:
:func:`bids_vlm.encoding.ridge.preferred_layer`), so that the tables below describe only voxels
some layer predicts; its relative depth is
layer / (n_layers - 1), 0 for the first and 1 for the last layer of the stream. The share of
each layer's ANs that drive each network is in :func:`bids_vlm.analysis.summaries.layer_table`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["network", "n_voxels", "n_voxels_with_layer", "mean_preferred_layer",
           "mean_preferred_depth", "sd_preferred_depth"]


def relative_depth(layer, n_layers: int) -> np.ndarray:
    """Relative depth layer / (n_layers - 1) of layer indices ``layer`` (scalar or (V,)) in a
    stream of ``n_layers`` layers: 0 for the first layer, 1 for the last; NaN where the layer
    is -1 (no preferred layer) or the stream has a single layer. The one definition of depth,
    also used by :mod:`bids_vlm.analysis.architecture`."""
    layer = np.asarray(layer, dtype=float)
    if n_layers < 2:
        return np.full(layer.shape, np.nan)
    return np.where(layer >= 0, layer / (n_layers - 1), np.nan)


def preferred_depth(best: np.ndarray, n_layers: int, masks: dict) -> pd.DataFrame:
    """Per network: its in-mask voxels, those with a preferred layer, and the mean preferred
    layer and mean (and SD) relative depth over the latter.

    best: (V,) preferred layer of each in-mask voxel (-1: none, e.g. no significant best
    layer, :func:`bids_vlm.encoding.ridge.preferred_layer`); n_layers: the stream's layer
    count; masks: {network: (V,) bool}. Means over no voxel are NaN."""
    best = np.asarray(best)
    depth = relative_depth(best, n_layers)
    rows = []
    for name, member in masks.items():
        chosen = member & (best >= 0)
        layers = best[chosen].astype(float)
        d = depth[chosen]
        rows.append({"network": name, "n_voxels": int(member.sum()),
                     "n_voxels_with_layer": int(chosen.sum()),
                     "mean_preferred_layer": layers.mean() if len(layers) else np.nan,
                     "mean_preferred_depth": d.mean() if len(d) and n_layers > 1 else np.nan,
                     "sd_preferred_depth": d.std() if len(d) and n_layers > 1 else np.nan})
    return pd.DataFrame(rows, columns=COLUMNS)
