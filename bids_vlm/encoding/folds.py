"""The cross-validation folds of the encoding: each run's frames, and the inner folds inside a
training set (whole runs, or contiguous parts of a single run)."""
from __future__ import annotations

import numpy as np


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
