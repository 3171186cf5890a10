"""Layer-wise encoding (METHOD.md 7): ridge regression from one layer's AN regressors to every
voxel, scored on held-out runs.

Outer cross-validation leaves one run out; inside the training runs, the ridge penalty of each
voxel is chosen by cross-validation over whole runs (at most ``max_inner_folds`` groups of runs;
contiguous folds when there is a single training run). himalaya is the engine: ``RidgeCV``, or
``KernelRidgeCV`` with a linear kernel when the layer has more features than training frames;
its ``torch`` / ``torch_cuda`` backends run on the CPU / GPU, with targets in batches.
Scores: Pearson r and R^2 of the held-out predictions over all held-out frames (each run's
frames z-scored), per voxel.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

ALPHAS = np.logspace(-1, 7, 9)


def method_description(alphas=ALPHAS) -> str:
    return ("ridge regression (himalaya) from the layer's AN regressors to each voxel; "
            "leave-one-run-out; penalty per voxel by cross-validation over the training runs "
            f"among {[float(a) for a in alphas]}; held-out Pearson r and R^2 over all held-out "
            "frames")


@dataclass
class EncodingResult:
    """Held-out scores of one layer. r, r2, alpha: (V,) (alpha: median over outer folds);
    predictions: (T, V) held-out predictions when asked for, else None."""

    r: np.ndarray
    r2: np.ndarray
    alpha: np.ndarray
    predictions: np.ndarray | None = None


def run_splits(run_lengths):
    """Frame indices of each run: list of (n_run,) int arrays."""
    edges = np.cumsum([0, *run_lengths])
    return [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]


def inner_splits(train_runs, max_folds=5, n_contiguous=5):
    """(train, test) index pairs inside the training frames (positions in their concatenation):
    whole runs (grouped into at most ``max_folds`` folds), or contiguous folds of one run."""
    lengths = [len(r) for r in train_runs]
    positions = run_splits(lengths)
    if len(train_runs) == 1:
        positions = np.array_split(positions[0], n_contiguous)
    groups = np.array_split(np.arange(len(positions)), min(max_folds, len(positions)))
    n = sum(lengths)
    splits = []
    for group in groups:
        test = np.concatenate([positions[g] for g in group])
        splits.append((np.setdiff1d(np.arange(n), test), test))
    return splits


@contextlib.contextmanager
def himalaya_backend(name):
    """Use himalaya backend ``name`` ('numpy', 'torch', 'torch_cuda') inside the block."""
    from himalaya.backend import get_backend, set_backend

    previous = get_backend()
    set_backend(name, on_error="raise")
    try:
        yield get_backend()
    finally:
        set_backend(previous)


def _model(n_features, n_train, splits, alphas, n_targets_batch):
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    params = {"n_targets_batch": n_targets_batch, "n_alphas_batch": len(alphas),
              "n_targets_batch_refit": n_targets_batch}
    if n_features > n_train:
        return KernelRidgeCV(alphas=alphas, kernel="linear", cv=splits, solver_params=params)
    return RidgeCV(alphas=alphas, cv=splits, solver_params=params)


def encode_layer(x, y, run_lengths, alphas=ALPHAS, backend="numpy", n_targets_batch=20000,
                 max_inner_folds=5, keep_predictions=False) -> EncodingResult:
    """Leave-one-run-out ridge from features x (T, F) to voxels y (T, V); needs >= 2 runs."""
    runs = run_splits(run_lengths)
    if len(runs) < 2:
        raise ValueError("layer-wise encoding needs at least 2 runs (leave-one-run-out)")
    pred = np.zeros(y.shape, dtype=np.float32)
    chosen = []
    with himalaya_backend(backend) as bk:
        for k, test in enumerate(runs):
            train_runs = [r for i, r in enumerate(runs) if i != k]
            train = np.concatenate(train_runs)
            splits = inner_splits(train_runs, max_inner_folds)
            model = _model(x.shape[1], len(train), splits, alphas, n_targets_batch)
            model.fit(bk.asarray(x[train], dtype="float32"), bk.asarray(y[train], dtype="float32"))
            pred[test] = bk.to_numpy(model.predict(bk.asarray(x[test], dtype="float32")))
            chosen.append(bk.to_numpy(model.best_alphas_))
    return EncodingResult(*heldout_scores(pred, y, runs), alpha=np.median(chosen, axis=0),
                          predictions=pred if keep_predictions else None)


def heldout_scores(pred, y, runs):
    """(V,) Pearson r and R^2 of predictions over all held-out frames, each run z-scored."""
    def z(a):
        a = a - a.mean(0)
        sd = a.std(0)
        return np.divide(a, sd, out=np.zeros_like(a), where=sd > 1e-12)

    yz = np.concatenate([z(y[r].astype(np.float64)) for r in runs])
    pz = np.concatenate([z(pred[r].astype(np.float64)) for r in runs])
    raw = np.concatenate([pred[r].astype(np.float64) - y[r].mean(0) for r in runs])
    y_c = np.concatenate([y[r].astype(np.float64) - y[r].mean(0) for r in runs])
    r = (yz * pz).mean(0)
    ss_tot = (y_c ** 2).sum(0)
    r2 = 1.0 - ((y_c - raw) ** 2).sum(0) / np.where(ss_tot > 0, ss_tot, np.inf)
    return r.astype(np.float32), r2.astype(np.float32)


def preferred_layer(scores: np.ndarray, layers) -> np.ndarray:
    """(V,) layer with the highest held-out r per voxel; -1 where no layer has r > 0.

    scores: (n_layers, V) held-out r; layers: their indices.
    """
    best = np.asarray(layers)[scores.argmax(0)]
    return np.where(scores.max(0) > 0, best, -1)


@dataclass
class BandedResult:
    """Held-out scores of a banded ridge model. r, r2: (V,) of the joint prediction;
    split_r2: {band: (V,)} the share of r2 each band explains (they add up to r2)."""

    r: np.ndarray
    r2: np.ndarray
    split_r2: dict


def encode_banded(bands: dict, y, run_lengths, alphas=ALPHAS, backend="numpy", n_iter=20,
                  max_inner_folds=5, n_targets_batch=20000, seed=0) -> BandedResult:
    """Banded ridge (himalaya GroupRidgeCV: one penalty per band and voxel, by random search
    over band weights with cross-validation over the training runs) from several feature bands
    {name: (T, F_b)} to voxels y (T, V); leave-one-run-out; the held-out R^2 is split among the
    bands with himalaya's ``r2_score_split``."""
    from himalaya.ridge import GroupRidgeCV
    from himalaya.scoring import r2_score_split

    names = list(bands)
    runs = run_splits(run_lengths)
    if len(runs) < 2:
        raise ValueError("banded encoding needs at least 2 runs (leave-one-run-out)")
    split = np.zeros((len(names), *y.shape), dtype=np.float32)
    with himalaya_backend(backend) as bk:
        for k, test in enumerate(runs):
            train_runs = [r for i, r in enumerate(runs) if i != k]
            train = np.concatenate(train_runs)
            model = GroupRidgeCV(groups="input", cv=inner_splits(train_runs, max_inner_folds),
                                 random_state=seed, solver_params={
                                     "n_iter": n_iter, "alphas": np.asarray(alphas),
                                     "n_targets_batch": n_targets_batch,
                                     "progress_bar": False})
            model.fit([bk.asarray(bands[n][train], dtype="float32") for n in names],
                      bk.asarray(y[train], dtype="float32"))
            pred = model.predict([bk.asarray(bands[n][test], dtype="float32") for n in names],
                                 split=True)
            split[:, test] = bk.to_numpy(pred)
        y_c = np.concatenate([y[r] - y[r].mean(0) for r in runs]).astype(np.float32)
        pred_c = np.concatenate([split[:, r] - split[:, r].mean(1, keepdims=True) for r in runs],
                                axis=1)
        parts = bk.to_numpy(r2_score_split(bk.asarray(y_c), bk.asarray(pred_c)))
    r, r2 = heldout_scores(split.sum(0), y, runs)
    return BandedResult(r=r, r2=r2, split_r2={n: parts[i].astype(np.float32)
                                              for i, n in enumerate(names)})
