"""Paper mode (docs/METHOD.md 4 and 6, inferred): sparse dictionary learning of the AN time series.

The activations of a layer's ANs on the stimulus grid (each AN centred, unit norm),
X (n_samples, N), are factored
as X^T ~ A D with D (K, n_samples) temporal *atoms* and sparse loadings A (N, K) (L1 penalty
``alpha``; scikit-learn's MiniBatchDictionaryLearning). Each atom is HRF-convolved like an AN
(:mod:`bids_vlm.design.regressors`), the K atom regressors are fitted together to every voxel by
ordinary least squares (with an intercept), and each atom's t-map gets Benjamini-Hochberg FDR
across voxels. The coefficients' variances are the exact GLM ones for each voxel's stationary
noise autocorrelation (estimated before the cleaning, Tukey-tapered, as the association's
``exact`` method) when the caller gives it (:func:`atom_glm`), else frames count as independent.
An atom's *AN sub-group* is the ANs with a non-zero loading on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
from scipy import stats

from bids_vlm.design.cleaned_runs import load_cleaned, pooled_noise_sums
from bids_vlm.design.cleaning import lag_traces
from bids_vlm.design.regressors import sample_activations
from bids_vlm.design.runs import run_designs, unit_regressors
from bids_vlm.inputs.stimuli import sample_items
from bids_vlm.stats.autocorr import default_lags, tukey_taper


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
    # local import: scikit-learn takes ~1 s to import; only in paper mode
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


def atom_glm(regressors: np.ndarray, voxels: np.ndarray, q: float = 0.05, n_removed: int = 0,
             noise_rho: np.ndarray | None = None, lag_traces: np.ndarray | None = None,
             run_lengths=None, chunk: int = 4096):
    """OLS of voxels (T, V) on atom regressors (T, K) plus an intercept.

    Returns t (K, V), BH q-values (K, V) per atom across voxels (two-sided p from a t
    distribution with df = T - K - 1 - n_removed, n_removed the dimensions the cleaning projected
    out of both sides) and that df. ``q`` is not used (kept for callers; threshold the q-values).

    Without ``noise_rho`` the frames are treated as independent: Var(beta_j) = sigma^2 |c_j|^2,
    sigma^2 = RSS / df, with c_j the row j of pinv([X, 1]). Under autocorrelated noise this is
    liberal (false-positive rate at 0.05: 0.115 / 0.192 / 0.256 for AR(1) 0.3 / 0.6 / 0.9 noise in
    the simulation of tests/encoding/test_atoms.py).

    With ``noise_rho`` (n_lags, V): each voxel's noise autocorrelation rho(1..n_lags) *before*
    the cleaning, estimated within runs from its detrended but otherwise uncleaned series,
    **untapered** (e.g. ``noise_lag_sums[1:] / noise_lag_sums[0]`` of
    :func:`bids_vlm.design.cleaning.noise_lag_sums`); the Tukey taper w_k
    (:func:`bids_vlm.stats.autocorr.tukey_taper`) is applied here, rho_k <- w_k rho_k, as
    the association's ``exact`` method does. NaNs count as 0. The noise is taken as stationary
    within runs, autocovariance gamma_0 rho_k (0 beyond n_lags and across runs), and the
    variance of each coefficient is the exact GLM one under that model:

        Var(beta_j) = gamma_0 (|c_j|^2 + 2 sum_k rho_k L_k(c_j)),  L_k(c) = sum_t c_t c_{t+k}
        gamma_0 = RSS / (tr M_f + 2 sum_k rho_k m_k(M_f)),          m_k(A) = sum_t A[t, t+k]

    (lag sums within runs), from E[RSS] = tr(M_f S) with M_f = M - H the residual-forming
    matrix of the cleaned fit: M the cleaning projection, H the hat matrix of the cleaned
    regressors, m_k(H) = sum over an orthonormal basis u of the regressors of L_k(u) and
    m_k(M) = ``lag_traces[k]``. t_j = beta_j / sqrt(Var(beta_j)); p from the t distribution with
    the df above. Calibrated in simulation (tests/encoding/test_atoms.py: 2 runs x 150 frames, 8 atoms, 24
    lags; false-positive rate at 0.05 0.051 / 0.052 / 0.049 at AR(1) 0.3 / 0.6 / 0.9; 4 runs x 250
    frames, 64 atoms: 0.050 / 0.050 / 0.049, also with each run z-scored as clean_signals does).
    The normal instead of the t gave 0.001 more; a per-voxel effective df (df / (1 + 2 sum_k
    rho_k^2)) 0.043 at 0.9. Voxels whose variance comes out non-positive (a constant voxel, or a
    degenerate rho) get t = 0.

    lag_traces: (>= n_lags + 1,) sum over runs of sum_t M[t, t+k], k = 0..n_lags
    (:func:`bids_vlm.design.cleaning.lag_traces` of each run's projection, summed); M must be the
    projection the regressors and voxels were both cleaned with and must remove each run's mean
    (every cleaning of this package does), so the intercept lies in its null space. None: no
    cleaning (M = I; then n_removed must be 0), as does lag_traces[0] == T.
    run_lengths: frames per run (no lag crosses a run boundary); None: one run.

    Cost: O(T K n_lags) shared, then O(K n_lags) per voxel for the variances (besides the
    O(T K) OLS fit); voxels in chunks of ``chunk``.
    """
    regressors = np.asarray(regressors, dtype=np.float64)
    n_frames, k = regressors.shape
    n_vox = voxels.shape[1]
    if voxels.shape[0] != n_frames:
        raise ValueError(f"voxels have {voxels.shape[0]} frames, regressors {n_frames}")
    design = np.column_stack([regressors, np.ones(n_frames)])
    pinv = np.linalg.pinv(design)  # (K + 1, T)
    df = n_frames - k - 1 - int(n_removed)
    if noise_rho is not None:
        rho, var_lags, trace_f, resid_lags = _autocorrelated_terms(
            regressors, pinv[:k], noise_rho, lag_traces, run_lengths, n_removed, n_vox)
    t = np.zeros((k, n_vox))
    for start in range(0, n_vox, chunk):
        y = np.asarray(voxels[:, start:start + chunk], dtype=np.float64)
        beta = pinv @ y  # (K + 1, w)
        rss = ((y - design @ beta) ** 2).sum(0)
        if noise_rho is None:
            var = (pinv[:k] ** 2).sum(1)[:, None] * (rss / max(df, 1))[None, :]
        else:
            r = rho[:, start:start + chunk]  # (L, w), tapered
            den = trace_f + 2.0 * resid_lags @ r  # E[RSS] / gamma_0
            gamma0 = np.divide(rss, den, out=np.zeros_like(rss), where=den > 0)
            var = ((pinv[:k] ** 2).sum(1)[:, None] + 2.0 * var_lags @ r) * gamma0[None, :]
        t[:, start:start + chunk] = np.divide(beta[:k], np.sqrt(np.clip(var, 0.0, None)),
                                              out=np.zeros_like(var), where=var > 0)
    p = 2 * stats.t.sf(np.abs(t), max(df, 1))
    qv = np.vstack([stats.false_discovery_control(row) for row in p]) if k else p
    return t.astype(np.float32), qv.astype(np.float32), df


def lag_products(columns: np.ndarray, run_lengths, n_lags: int) -> np.ndarray:
    """(n_lags, n) L_k(c) = sum_t c_t c_{t+k}, k = 1..n_lags, of the columns c of ``columns``
    (T, n), summed within runs (no lag crosses a run boundary)."""
    columns = np.asarray(columns, dtype=np.float64)
    out = np.zeros((n_lags, columns.shape[1]))
    start = 0
    for length in run_lengths:
        seg = columns[start:start + length]
        for lag in range(1, min(n_lags, length - 1) + 1):
            out[lag - 1] += (seg[:-lag] * seg[lag:]).sum(0)
        start += length
    return out


def _autocorrelated_terms(regressors, rows, noise_rho, lag_traces, run_lengths, n_removed,
                          n_vox):
    """The shared parts of the autocorrelated variances: tapered rho (L, V), L_k(c_j) (K, L),
    tr M_f and m_k(M_f) (L,)."""
    n_frames, k = regressors.shape
    rho = np.nan_to_num(np.asarray(noise_rho, dtype=np.float64))
    if rho.ndim != 2 or rho.shape[1] != n_vox:
        raise ValueError(f"noise_rho must be (n_lags, {n_vox}), not {rho.shape}")
    n_lags = rho.shape[0]
    rho = rho * tukey_taper(n_lags)[:, None]
    runs = [n_frames] if run_lengths is None else [int(n) for n in run_lengths]
    if sum(runs) != n_frames or min(runs) < 1:
        raise ValueError(f"run lengths {runs} do not add up to the {n_frames} frames")
    if lag_traces is None:
        if n_removed:
            raise ValueError("lag_traces (of the cleaning projection) are needed with "
                             "noise_rho when the cleaning removed dimensions")
        traces = np.zeros(n_lags + 1)  # M = I: sum_t I[t, t+k] = T for k = 0, else 0
        traces[0] = n_frames
    else:
        traces = np.asarray(lag_traces, dtype=np.float64).ravel()
        if traces.shape[0] < n_lags + 1:
            raise ValueError(f"lag_traces cover lags 0..{traces.shape[0] - 1}, not "
                             f"0..{n_lags}")
        traces = traces[:n_lags + 1]
    demeaned = abs(traces[0] - n_frames) > 1e-6  # M != I: it removes each run's mean
    if demeaned:
        start = 0
        for n in runs:
            seg = regressors[start:start + n]
            if np.any(np.abs(seg.mean(0)) > 1e-3 * np.maximum(seg.std(0), 1e-12)):
                raise ValueError("with lag_traces of a cleaning, the regressors must be cleaned "
                                 "by it (each run's mean removed)")
            start += n
        basis = regressors - _run_means(regressors, runs)
    else:
        basis = np.column_stack([regressors, np.ones(n_frames)])
    u, sv, _ = np.linalg.svd(basis, full_matrices=False)
    u = u[:, sv > sv[0] * 1e-10] if sv.size and sv[0] > 0 else u[:, :0]
    hat_lags = lag_products(u, runs, n_lags).sum(1)  # m_k(H), k = 1..L
    trace_f = traces[0] - u.shape[1]
    resid_lags = traces[1:] - hat_lags
    var_lags = lag_products(rows.T, runs, n_lags).T  # (K, L)
    return rho, var_lags, trace_f, resid_lags


def _run_means(x, runs):
    """x's column means within each run, repeated over the run's frames."""
    return np.concatenate([np.repeat(x[s:s + n].mean(0, keepdims=True), n, axis=0)
                           for s, n in zip(np.cumsum([0] + runs[:-1]), runs)])


def match_atoms(found: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(K_true,) best |correlation| of each true atom (columns of ``true``) with a found one."""
    corr = np.corrcoef(found.T, true.T)[:found.shape[1], found.shape[1]:]
    return np.abs(corr).max(0)


def write_atoms(timelines: dict, activations_file, runs, cleaned_files, config, path) -> str:
    """Paper mode: atoms of every layer's AN time series, their HRF regressors (built and
    cleaned as the association's, :mod:`bids_vlm.design.runs`) fitted to every voxel ->
    ``path`` (HDF5; a group per layer: atoms, loadings, t, q; attribute df)."""
    designs = run_designs(runs, timelines, config)
    voxels = load_cleaned(cleaned_files)
    edges = np.cumsum([0] + [len(d.timeline.times) for d in designs])
    removed = sum(d.removed for d in designs)
    noise = {}  # the association's noise model (exact GLM variance) unless --autocorr none
    if config.stats.autocorr != "none":
        n_lags = config.stats.n_lags or default_lags([r.n_scans for r in runs])
        sums = pooled_noise_sums(cleaned_files)[:n_lags + 1]
        rho = np.divide(sums[1:], sums[0], out=np.zeros_like(sums[1:]), where=sums[0] > 1e-12)
        noise = dict(noise_rho=rho, lag_traces=sum(lag_traces(d.projection, n_lags)
                                                    for d in designs),
                     run_lengths=[r.n_scans for r in runs])
    with h5py.File(activations_file, "r") as acts, h5py.File(path, "w") as out:
        out.attrs["model"] = acts.attrs["model"]
        for stream in (s for s in acts if s != "items"):
            index = {k: i for i, k in enumerate(acts[f"items/{stream}"].asstr()[()])}
            for layer in acts[stream]:
                table = acts[f"{stream}/{layer}"][()]
                samples = np.concatenate([sample_activations(sample_items(d.timeline, stream),
                                                             table, index) for d in designs])
                atoms, loadings = learn_atoms(samples, config.stats.n_atoms,
                                              config.stats.atom_alpha, config.model.seed)
                regs = unit_regressors(designs, [atoms[a:b] for a, b in zip(edges[:-1],
                                                                            edges[1:])],
                                       config.bold)
                t, q, df = atom_glm(regs, voxels, n_removed=removed, **noise)
                for name, value in (("atoms", atoms), ("loadings", loadings), ("t", t),
                                    ("q", q)):
                    out[f"{stream}/{layer}/{name}"] = value
                out.attrs["df"] = df
    return str(path)
