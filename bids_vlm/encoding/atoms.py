"""Paper mode (METHOD.md 4 and 6, inferred): sparse dictionary learning of the AN time series.

The activations of a layer's ANs on the stimulus grid (each AN centred, unit norm),
X (n_samples, N), are factored
as X^T ~ A D with D (K, n_samples) temporal *atoms* and sparse loadings A (N, K) (L1 penalty
``alpha``; scikit-learn's MiniBatchDictionaryLearning). Each atom is HRF-convolved like an AN
(:mod:`bids_vlm.regressors`), the K atom regressors are fitted together to every voxel by
ordinary least squares (with an intercept), and each atom's t-map gets Benjamini-Hochberg FDR
across voxels. An atom's *AN sub-group* is the ANs with a non-zero loading on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class AtomResult:
    """atoms (n_samples, K); loadings (N, K); t, q (K, V); df of the t-test."""

    atoms: np.ndarray
    loadings: np.ndarray
    t: np.ndarray
    q: np.ndarray
    df: int


def learn_atoms(activations: np.ndarray, n_atoms: int = 64, alpha: float = 0.2,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Atoms (n_samples, K) and loadings (N, K) of activations (n_samples, N).

    Each AN's time series is centred and scaled to unit norm first (constant ones stay 0), so
    that ``alpha`` (the L1 penalty of the loadings, in the learning and in the final sparse
    coding) does not depend on the number of samples. K is at most min(N, n_samples).
    """
    from sklearn.decomposition import MiniBatchDictionaryLearning

    x = activations.astype(np.float64)
    x = x - x.mean(0)
    norm = np.linalg.norm(x, axis=0)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)
    k = int(min(n_atoms, x.shape[0], x.shape[1]))
    learner = MiniBatchDictionaryLearning(n_components=k, alpha=alpha, random_state=seed,
                                          batch_size=256, max_iter=50,
                                          transform_algorithm="lasso_cd", transform_alpha=alpha)
    loadings = learner.fit(x.T).transform(x.T)
    return learner.components_.T.astype(np.float32), loadings.astype(np.float32)


def atom_glm(regressors: np.ndarray, voxels: np.ndarray, q: float = 0.05, n_removed: int = 0):
    """OLS of voxels (T, V) on atom regressors (T, K) plus an intercept.

    Returns t (K, V), BH q-values (K, V) per atom across voxels (two-sided t-test,
    T - K - 1 - n_removed degrees of freedom, n_removed the dimensions the cleaning projected
    out of both sides; frames treated as independent) and the df.
    """
    n_frames, k = regressors.shape
    design = np.column_stack([regressors.astype(np.float64), np.ones(n_frames)])
    pinv = np.linalg.pinv(design)
    beta = pinv @ voxels.astype(np.float64)  # (K + 1, V)
    resid = voxels - design @ beta
    df = n_frames - k - 1 - int(n_removed)
    sigma2 = (resid ** 2).sum(0) / max(df, 1)
    var = np.diag(pinv @ pinv.T)[:k, None] * sigma2[None, :]
    t = np.divide(beta[:k], np.sqrt(var), out=np.zeros((k, voxels.shape[1])), where=var > 0)
    p = 2 * stats.t.sf(np.abs(t), df)
    qv = np.vstack([stats.false_discovery_control(row) for row in p]) if k else p
    return t.astype(np.float32), qv.astype(np.float32), df


def match_atoms(found: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(K_true,) best |correlation| of each true atom (columns of ``true``) with a found one."""
    corr = np.corrcoef(found.T, true.T)[:found.shape[1], found.shape[1]:]
    return np.abs(corr).max(0)
