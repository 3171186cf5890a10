"""Virtual lesion (docs/METHOD.md 8, functional redundancy; beyond the paper): how the held-out
encoding accuracy of a network falls as its top driving ANs are removed.

For a network and one stream, the layer whose ridge model predicts the network best (highest
mean held-out r over its voxels) is lesioned. Each leave-one-run-out fold ranks the layer's ANs
by their BN count in the network in an association of its training runs only
(:func:`fold_counts`: the same statistics as the participant's association, over the network's
voxels; most first, ties by AN index), so the held-out run never chooses what is removed. At
each step the fold's top k ANs are removed, the fold's ridge model
(:func:`bids_vlm.encoding.ridge.fold_predict`) is refitted on the remaining ANs and predicts its
held-out run; the score is the mean held-out r over the network's voxels. The control removes k
ANs drawn at random (one seeded permutation of the layer's ANs, its first k at each step, the
same in every fold). With FIR features every delayed copy of a removed AN goes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_vlm.encoding.ridge import fold_predict, heldout_scores, himalaya_backend, run_splits
from bids_vlm.stats.unique import N_PCS, layer_association
from bids_vlm.stats.association import prepare_voxels
from bids_vlm.stats.autocorr import default_lags

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


@dataclass(frozen=True)
class FoldAssociation:
    """The association a fold ranks ANs with: the participant's settings (``--bn-definition``,
    ``--nuisance-pcs``, ``--autocorrelation-correction``, ``--n-lags`` (None: default),
    ``--fdr-q``, ``--fdr-scope``) and the device."""
    definition: str = "unique"
    n_pcs: int = N_PCS
    autocorr: str = "exact"
    n_lags: int | None = None
    q: float = 0.05
    fdr_scope: str = "selective"
    device: str = "cpu"


def rank_by_network(an_index, voxel_index, member, n_ans: int):
    """(counts (n_ans,) BNs of each AN in the network, order (n_ans,) AN indices by count, most
    first, ties by index). an_index / voxel_index: significant entries; member: (V,) bool of
    the network."""
    counts = np.bincount(np.asarray(an_index)[member[np.asarray(voxel_index)]],
                         minlength=n_ans)
    return counts, np.argsort(-counts, kind="stable")


def fold_counts(x, y, run_lengths, k: int, settings: FoldAssociation = FoldAssociation(),
                presence=None, noise=None) -> np.ndarray:
    """(n_ans,) BNs of each AN among the voxels y in the association of fold k's training runs
    (every run but run k), with the participant's statistics restricted to these voxels.

    x: (T, n_ans) the layer's cleaned AN regressors; y: (T, Vn) the network's cleaned voxels;
    presence: (T,) or (T, p) the stream's cleaned presence regressor(s) (``unique``); noise:
    for ``exact``, {"run_noise": per run (>= K + 1, Vn) noise lag sums, "run_traces":
    (n_runs, K + 1) cleaning lag traces}, and "run_removed": (n_runs,) dimensions each run's
    cleaning removed (default: the voxels' own lag sums, each run's mean removal)."""
    noise = noise or {}
    keep = [i for i in range(len(run_lengths)) if i != k]
    train = np.concatenate([r for i, r in enumerate(run_splits(run_lengths)) if i != k])
    lengths = [int(run_lengths[i]) for i in keep]
    n_lags = settings.n_lags or default_lags(run_lengths)  # the participant's K
    removed = noise.get("run_removed")
    common = dict(run_lengths=lengths, autocorr=settings.autocorr, n_lags=n_lags,
                  n_removed=0 if removed is None else int(np.sum(np.asarray(removed)[keep])))
    sums = {}
    if settings.autocorr == "exact" and noise.get("run_noise") is not None:
        sums = dict(noise_sums=sum(np.asarray(noise["run_noise"][i][:n_lags + 1], np.float64)
                                   for i in keep),
                    lag_traces=np.asarray(noise["run_traces"])[keep].sum(0))
    prepared = prepare_voxels(np.asarray(y)[train], device=settings.device, **common, **sums)
    pres = None if presence is None else np.asarray(presence)[train]
    res, _ = layer_association(np.asarray(x)[train], prepared, pres, settings.definition,
                               settings.n_pcs, **sums, q=settings.q, device=settings.device,
                               fdr_scope=settings.fdr_scope, **common)
    return np.bincount(res.an_index, minlength=x.shape[1])


def fold_orders(counts) -> np.ndarray:
    """(n_folds, n_ans) each fold's AN indices by its BN count (n_folds, n_ans), most first,
    ties by index."""
    return np.argsort(-np.asarray(counts), axis=1, kind="stable")


def kept_columns(removed, n_ans: int, n_features: int) -> np.ndarray:
    """Feature columns left when the ANs ``removed`` go; features are n_ans columns per delay
    (delay-major, as :func:`bids_vlm.design.regressors.make_delayed_regressors` stacks them)."""
    if n_features % n_ans:
        raise ValueError(f"{n_features} features are not a multiple of {n_ans} ANs")
    keep = np.ones(n_ans, bool)
    keep[np.asarray(removed, dtype=int)] = False
    return np.flatnonzero(np.tile(keep, n_features // n_ans))


def lesion_curve(x, y, run_lengths, orders, steps, seed=0, **ridge) -> pd.DataFrame:
    """Mean held-out r over the voxels y as the ANs are removed.

    x: (T, F) the layer's features (F a multiple of its n_ans ANs); y: (T, Vn) the network's
    voxels; orders: (n_folds, n_ans) per held-out run, the AN indices ranked on its training
    runs (:func:`fold_orders`; one (n_ans,) order serves every fold), the first removed first;
    steps: (fraction, k) pairs; ridge: ``alphas``, ``backend``, ``max_inner_folds`` of
    :func:`bids_vlm.encoding.ridge.fold_predict`. Returns rows (step, n_removed,
    mean_r_targeted, mean_r_random)."""
    runs = run_splits(run_lengths)
    orders = np.broadcast_to(np.asarray(orders), (len(runs), np.shape(orders)[-1]))
    n_ans = orders.shape[1]
    x, y = np.asarray(x), np.asarray(y)
    shuffled = np.random.default_rng(seed).permutation(n_ans)
    backend = ridge.pop("backend", "numpy")

    def score(removed_of):  # removed_of(fold) -> the fold's removed ANs
        pred = np.zeros(y.shape, np.float32)
        for k, test in enumerate(runs):
            cols = kept_columns(removed_of(k), n_ans, x.shape[1])
            pred[test] = fold_predict(x[:, cols], y, runs, k, **ridge)[0]
        return float(heldout_scores(pred, y, runs)[0].mean())

    rows = []
    with himalaya_backend(backend):
        for frac, n in steps:
            targeted = score(lambda k: orders[k, :n])
            random = targeted if n == 0 else score(lambda k: shuffled[:n])
            rows.append({"step": frac, "n_removed": n, "mean_r_targeted": targeted,
                         "mean_r_random": random})
    return pd.DataFrame(rows, columns=["step", "n_removed", "mean_r_targeted",
                                       "mean_r_random"])


def best_layer(scores: dict, member) -> tuple:
    """The (stream, layer) key of ``scores`` ({key: (V,) held-out r}) with the highest mean r
    over the network's voxels ``member``."""
    return max(scores, key=lambda key: float(np.mean(scores[key][member])))


def network_lesions(features, regressors, scores, voxels, run_lengths, masks, fractions,
                    driven=None, seed=0, settings: FoldAssociation = FoldAssociation(),
                    presence=None, noise=None, **ridge) -> pd.DataFrame:
    """The lesion curve of every network and stream.

    features: {(stream, layer): (T, F) array-like, read only for the chosen layer};
    regressors: {(stream, layer): (T, n_ans) array-like} the cleaned AN regressors the folds
    rank with (:func:`fold_counts`); scores: {(stream, layer): (V,) held-out r}; voxels:
    (T, V); masks: {network: (V,) bool}; fractions: the steps; driven: {network: streams with
    an AN that drives it} (None: every network), the others are skipped, as are networks where
    no fold finds a BN; presence: {stream: (T,) or (T, p)}; noise: as fold_counts takes it,
    "run_noise" over all V voxels. Returns rows of COLUMNS; n_ans_with_bn is the mean over
    folds."""
    frames = []
    for network, member in masks.items():
        if not member.any():
            continue
        for stream in sorted({s for s, _ in scores}):
            if driven is not None and stream not in driven.get(network, ()):
                continue
            key = best_layer({k: v for k, v in scores.items() if k[0] == stream}, member)
            y = voxels[:, member]
            fold_noise = _restricted(noise, member)
            x = np.asarray(regressors[key])
            counts = np.array([fold_counts(x, y, run_lengths, k, settings,
                                           (presence or {}).get(stream), fold_noise)
                               for k in range(len(run_lengths))])
            if not counts.any():
                continue
            curve = lesion_curve(features[key], y, run_lengths, fold_orders(counts),
                                 removal_counts(fractions, x.shape[1]), seed, **ridge)
            for i, (column, value) in enumerate([
                    ("network", network), ("stream", stream), ("layer", key[1]),
                    ("n_voxels", int(member.sum())), ("n_ans", x.shape[1]),
                    ("n_ans_with_bn", float((counts > 0).sum(1).mean()))]):
                curve.insert(i, column, value)
            frames.append(curve)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _restricted(noise, member):
    """noise with each run's lag sums restricted to the network's voxels."""
    if not noise or noise.get("run_noise") is None:
        return noise
    return dict(noise, run_noise=[sums[:, member] for sums in noise["run_noise"]])
