"""Virtual lesion (METHOD.md 8, functional redundancy; beyond the paper): how the held-out
encoding accuracy of a network falls as its top driving ANs are removed.

For a network and one stream, the layer whose ridge model predicts the network best (highest
mean held-out r over its voxels) is lesioned: its ANs are ranked by their BN count in the network
(most first, ties by AN index), the top k are removed at each step and the leave-one-run-out
ridge model (:func:`bids_vlm.encoding.ridge.encode_layer`) is refitted on the remaining ANs; the
score is the mean held-out r over the network's voxels. The control removes k ANs drawn at random
(one seeded permutation of the layer's ANs, its first k at each step). With FIR features every
delayed copy of a removed AN goes.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bids_vlm.encoding.ridge import encode_layer

DEFAULT_STEPS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5)
COLUMNS = ["network", "stream", "layer", "n_voxels", "n_ans", "n_ans_with_bn", "step",
           "n_removed", "mean_r_targeted", "mean_r_random"]


def removal_counts(fractions, n_ans: int) -> list:
    """(step fraction, ANs removed) pairs: ceil(fraction * n_ans), distinct, below n_ans."""
    out, seen = [], set()
    for frac in sorted(fractions):
        k = math.ceil(frac * n_ans - 1e-9)
        if k < n_ans and k not in seen:
            seen.add(k)
            out.append((float(frac), k))
    return out


def rank_by_network(an_index, voxel_index, member, n_ans: int):
    """(counts (n_ans,) BNs of each AN in the network, order (n_ans,) AN indices by count, most
    first, ties by index). an_index / voxel_index: the layer's significant entries; member:
    (V,) bool of the network."""
    counts = np.bincount(np.asarray(an_index)[member[np.asarray(voxel_index)]],
                         minlength=n_ans)
    return counts, np.argsort(-counts, kind="stable")


def kept_columns(removed, n_ans: int, n_features: int) -> np.ndarray:
    """Feature columns left when the ANs ``removed`` go; features are n_ans columns per delay
    (delay-major, as :func:`bids_vlm.regressors.make_delayed_regressors` stacks them)."""
    if n_features % n_ans:
        raise ValueError(f"{n_features} features are not a multiple of {n_ans} ANs")
    keep = np.ones(n_ans, bool)
    keep[np.asarray(removed, dtype=int)] = False
    return np.flatnonzero(np.tile(keep, n_features // n_ans))


def lesion_curve(x, y, run_lengths, order, steps, seed=0, **ridge) -> pd.DataFrame:
    """Mean held-out r over the voxels y as the ANs are removed.

    x: (T, F) the layer's features (F a multiple of its n_ans = len(order) ANs); y: (T, Vn) the
    network's voxels; order: (n_ans,) AN indices, the first removed first; steps: (fraction,
    k) pairs; ridge: keyword arguments of ``encode_layer`` (alphas, backend, max_inner_folds).
    Returns rows (step, n_removed, mean_r_targeted, mean_r_random)."""
    n_ans = len(order)
    x = np.asarray(x)
    shuffled = np.random.default_rng(seed).permutation(n_ans)

    def score(removed):
        cols = kept_columns(removed, n_ans, x.shape[1])
        return float(encode_layer(x[:, cols], y, run_lengths, **ridge).r.mean())

    rows = []
    for frac, k in steps:
        targeted = score(order[:k])
        rows.append({"step": frac, "n_removed": k, "mean_r_targeted": targeted,
                     "mean_r_random": targeted if k == 0 else score(shuffled[:k])})
    return pd.DataFrame(rows, columns=["step", "n_removed", "mean_r_targeted",
                                       "mean_r_random"])


def best_layer(scores: dict, member) -> tuple:
    """The (stream, layer) key of ``scores`` ({key: (V,) held-out r}) with the highest mean r
    over the network's voxels ``member``."""
    return max(scores, key=lambda key: float(np.mean(scores[key][member])))


def network_lesions(features, entries, n_ans, scores, voxels, run_lengths, masks, fractions,
                    driven=None, seed=0, **ridge) -> pd.DataFrame:
    """The lesion curve of every network and stream.

    features: {(stream, layer): (T, F) array-like, read only for the chosen layer};
    entries: {(stream, layer): (an_index, voxel_index)} the layer's significant entries;
    n_ans: {(stream, layer): ANs}; scores: {(stream, layer): (V,) held-out r}; voxels: (T, V);
    masks: {network: (V,) bool}; fractions: the steps; driven: {network: streams with an AN
    that drives it} (None: every network), the others are skipped. Returns rows of COLUMNS.
    """
    frames = []
    for network, member in masks.items():
        if not member.any():
            continue
        for stream in sorted({s for s, _ in scores}):
            if driven is not None and stream not in driven.get(network, ()):
                continue
            key = best_layer({k: v for k, v in scores.items() if k[0] == stream}, member)
            counts, order = rank_by_network(*entries[key], member, n_ans[key])
            if not counts.any():
                continue
            curve = lesion_curve(features[key], voxels[:, member], run_lengths, order,
                                 removal_counts(fractions, n_ans[key]), seed, **ridge)
            curve.insert(0, "network", network)
            curve.insert(1, "stream", stream)
            curve.insert(2, "layer", key[1])
            curve.insert(3, "n_voxels", int(member.sum()))
            curve.insert(4, "n_ans", n_ans[key])
            curve.insert(5, "n_ans_with_bn", int((counts > 0).sum()))
            frames.append(curve)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
