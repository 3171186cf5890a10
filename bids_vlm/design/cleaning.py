"""Stage 5: BOLD -> cleaned in-mask voxel time series (nilearn masking and signal cleaning).

Default confound strategy for fMRIPrep confounds (docs/METHOD.md 5): the 6 motion parameters and
their temporal derivatives, the first ``n_acompcor`` aCompCor components and fMRIPrep's cosine
drift terms; plus linear detrending, a high-pass at ``high_pass`` Hz (discrete cosine basis)
and a z-score per run. fMRIPrep's ``non_steady_state_outlier_XX`` columns (one-hot spikes of
the volumes acquired before the magnetisation reached steady state) are always regressed out:
each censors its frame on both sides (its cleaned value is 0 in the BOLD and in every AN
regressor) and costs one degree of freedom; the noise lag sums skip those frames. The AN regressors get the same cleaning (:func:`clean_signals`).
Raw BOLD (no derivative) is masked and cleaned the same way without confounds; it is not
motion-corrected or normalised, and the outputs say so. Reading the BOLD and the mask:
:mod:`bids_vlm.design.bold`; the stage's files read back: :mod:`bids_vlm.design.cleaned_runs`.
"""
from __future__ import annotations

import logging
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from nilearn import signal

from bids_vlm.config import BoldConfig
from bids_vlm.design.bold import load_bold
from bids_vlm.errors import DataError
from bids_vlm.stats.autocorr import lag_sums, default_lags

LOGGER = logging.getLogger("bids_vlm.design.cleaning")
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
NON_STEADY = re.compile(r"non_steady_state_outlier_?\d+")


def fmriprep_1x_names(table: pd.DataFrame) -> pd.DataFrame:
    """An fMRIPrep 1.0-1.1 confounds table (``_bold_confounds.tsv``: X, Y, Z, RotX, RotY, RotZ,
    aCompCor00, Cosine00, NonSteadyStateOutlier00, ...) with the names of fMRIPrep >= 1.2
    (trans_x, ..., a_comp_cor_00, cosine00, non_steady_state_outlier00); other tables as they
    are."""
    if "trans_x" in table or not {"X", "RotX"} <= set(table.columns):
        return table
    names = dict(zip(("X", "Y", "Z", "RotX", "RotY", "RotZ"), MOTION))
    for col in table.columns:
        for old, new in (("aCompCor", "a_comp_cor_"), ("tCompCor", "t_comp_cor_"),
                         ("Cosine", "cosine"),
                         ("NonSteadyStateOutlier", "non_steady_state_outlier")):
            if re.fullmatch(old + r"\d+", col):
                names[col] = new + col[len(old):]
    return table.rename(columns=names)


def select_confounds(table: pd.DataFrame, config: BoldConfig) -> pd.DataFrame:
    """Columns of an fMRIPrep confounds table chosen by ``config.confounds`` (fMRIPrep 1.x
    names are read as their >= 1.2 equivalents: :func:`fmriprep_1x_names`).

    Returns (n_scans, n_confounds); NaNs (first row of derivatives) become 0.
    """
    table = fmriprep_1x_names(table)
    columns = []
    if "motion" in config.confounds:
        columns += [c for c in MOTION if c in table]
    if "motion_derivatives" in config.confounds:
        columns += [f"{c}_derivative1" for c in MOTION if f"{c}_derivative1" in table]
    if "acompcor" in config.confounds:
        comp = sorted((c for c in table if re.fullmatch(r"a_comp_cor_\d+", c)),
                      key=lambda c: int(c.rsplit("_", 1)[1]))
        columns += comp[:config.n_acompcor]
    if "cosine" in config.confounds:
        columns += sorted(c for c in table if c.startswith("cosine"))
    columns += sorted(c for c in table if NON_STEADY.fullmatch(c))  # always: censored frames
    return table[columns].fillna(0.0)


def censored_frames(confounds_path, n_scans: int) -> np.ndarray | None:
    """(n_scans,) bool: the frames a run's non-steady-state columns flag, or None when it has
    none (or no confounds)."""
    if not confounds_path:
        return None
    try:
        table = pd.read_csv(confounds_path, sep="\t", na_values=["n/a"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None  # read_confounds reports it
    table = fmriprep_1x_names(table)
    cols = [c for c in table if NON_STEADY.fullmatch(c)]
    if not cols or len(table) != n_scans:
        return None
    return (table[cols].fillna(0.0).to_numpy(float) != 0).any(axis=1)


def clean_bold(bold_path, mask_img, tr, confounds_path=None, config: BoldConfig = BoldConfig()):
    """Cleaned voxel time series of one run: (n_scans, n_voxels) float32, z-scored
    (:func:`load_bold` then :func:`clean_signals` with the run's confounds)."""
    data = load_bold(bold_path, mask_img, config)
    confounds = read_confounds(confounds_path, data.shape[0], config)
    return clean_signals(data, tr, confounds, config)


def drift_basis(n_scans: int, tr: float, high_pass: float) -> np.ndarray:
    """(n_scans, n_cosines) the discrete cosine basis of a high-pass at ``high_pass`` Hz
    (nilearn's GLM drift model, as SPM's), without its constant; (n_scans, 0) when off."""
    if not high_pass:
        return np.zeros((n_scans, 0))
    # local import: nilearn.glm takes ~1 s to import; only for the cosine drift basis
    from nilearn.glm.first_level import make_first_level_design_matrix

    with warnings.catch_warnings():  # a run too short for any cosine gets none
        warnings.simplefilter("ignore", UserWarning)
        design = make_first_level_design_matrix(np.arange(n_scans) * float(tr),
                                                drift_model="cosine", high_pass=high_pass)
    return design[[c for c in design if c.startswith("drift")]].to_numpy(float)


def nuisance_columns(n_scans: int, tr: float, confounds=None,
                     config: BoldConfig = BoldConfig()):
    """The columns :func:`clean_signals` regresses out besides the mean and the linear trend:
    the confounds, then the high-pass's cosines, (n_scans, n) or None."""
    parts = [c for c in (confounds, drift_basis(n_scans, tr, config.high_pass))
             if c is not None and c.shape[1]]
    return np.column_stack(parts) if parts else None


def clean_signals(data, tr, confounds=None, config: BoldConfig = BoldConfig()):
    """(n_scans, n) time series -> the same cleaning as the BOLD: confounds and the discrete
    cosine basis of the high-pass at ``config.high_pass`` Hz regressed out together with a
    linear trend (an exact projection, :func:`cleaning_projection`, without the edge transients
    a Butterworth filter leaves in short runs), z-score; constant columns -> 0.

    The cosines are built here and appended to the confounds (nilearn's own cosine filter is
    skipped when a confound resembles a cosine, e.g. a drifting motion parameter, so a
    correlated confound could remove the high-pass). Applied to the voxels and, identically, to
    the AN regressors of the run, so that the association and the encoding models see both
    sides filtered alike (as drift and confound columns in a GLM design would do). Returns
    float32.

    Each column is cleaned on its own, so the columns go through nilearn in float64 chunks of
    :data:`CHUNK`, on two threads when there are several: the same values as one call, without
    whole-run float64 copies (seconds of page faults a run at 2 mm).
    """
    data = np.asarray(data)
    nuisance = nuisance_columns(len(data), tr, confounds, config)
    out = np.empty(data.shape, np.float32)

    def clean(part_and_out):
        part, where = part_and_out
        part = np.asarray(part, np.float64)
        constant = part.std(axis=0) < 1e-8 * np.maximum(1.0, np.abs(part).max(axis=0))
        cleaned = signal.clean(part, confounds=nuisance, detrend=True,
                               standardize="zscore_sample", filter=False, t_r=tr)
        cleaned[:, constant] = 0.0
        where[...] = cleaned

    parts = list(zip(_chunks(data), _chunks(out)))
    if len(parts) == 1:  # e.g. a run's AN regressors: no threads
        clean(parts[0])
        return out
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(clean, parts))
    return out


CHUNK = 8192  # voxels (columns) a float64 step of the cleaning takes at a time


def _chunks(data: np.ndarray) -> list:
    """Views of data's columns, :data:`CHUNK` at a time (one, maybe empty, at least)."""
    return [data[:, s:s + CHUNK] for s in range(0, max(data.shape[1], 1), CHUNK)]


def read_confounds(confounds_path, n_scans: int, config: BoldConfig = BoldConfig()):
    """The selected confound columns of a run, (n_scans, n_confounds) float, or None."""
    if not confounds_path:
        return None
    try:
        table = pd.read_csv(confounds_path, sep="\t", na_values=["n/a"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the confounds table: {exc}", confounds_path) from exc
    if len(table) != n_scans:
        raise DataError(f"confounds have {len(table)} rows but the BOLD has "
                        f"{n_scans} volumes", confounds_path)
    selected = select_confounds(table, config)
    bad = [c for c in selected if pd.to_numeric(selected[c], errors="coerce").isna().any()]
    if bad:
        raise DataError(f"confound column(s) {', '.join(bad)} hold non-numeric values",
                        confounds_path)
    confounds = selected.to_numpy(float)
    infinite = [c for c, bad in zip(selected.columns, np.isinf(confounds).any(axis=0)) if bad]
    if infinite:
        raise DataError(f"confound column(s) {', '.join(infinite)} hold infinite values",
                        confounds_path)
    return confounds if confounds.shape[1] else None


def cleaning_projection(n_scans: int, tr: float, confounds=None,
                        config: BoldConfig = BoldConfig()) -> np.ndarray:
    """M (n_scans, n_scans): the orthogonal projection :func:`clean_signals` applies before its
    z-score, onto the complement of the mean, the linear trend, the confounds and the cosines
    (collinear columns count once: an orthonormal basis from their SVD)."""
    design = np.column_stack([np.ones(n_scans), np.linspace(-1.0, 1.0, n_scans)]
                             + [c for c in [nuisance_columns(n_scans, tr, confounds, config)]
                                if c is not None])
    design = design / np.maximum(np.linalg.norm(design, axis=0), 1e-12)
    u, sv, _ = np.linalg.svd(design, full_matrices=False)
    basis = u[:, sv > sv[0] * 1e-8]
    return np.eye(n_scans) - basis @ basis.T


def removed_dimensions(n_scans: int, tr: float, confounds=None,
                       config: BoldConfig = BoldConfig()) -> int:
    """How many dimensions of a run's time series :func:`clean_signals` projects out
    (mean, linear trend, cosine drift terms, confounds): the run's cleaned data live in
    ``n_scans - removed`` dimensions, which the association's degrees of freedom must use."""
    return int(round(n_scans - np.trace(cleaning_projection(n_scans, tr, confounds, config))))


def lag_traces(projection: np.ndarray, n_lags: int) -> np.ndarray:
    """(n_lags + 1,) sum_t M[t, t + k] for k = 0..n_lags of a run's cleaning projection M
    (k = 0: its trace, the dimensions left). With a voxel's stationary noise autocorrelation
    rho, E|M y|^2 = gamma_0 (m_0 + 2 sum_k rho_k m_k): the association's exact null variance
    (:mod:`bids_vlm.stats.autocorr`)."""
    n = projection.shape[0]
    return np.array([np.trace(projection, offset=k) if k < n else 0.0
                     for k in range(n_lags + 1)])


def noise_lag_sums(data: np.ndarray, n_lags: int, censor=None) -> np.ndarray:
    """(n_lags + 1, V) float32 lag sums sum_t y_t y_{t+k}, k = 0..n_lags, of each voxel's
    linearly detrended (otherwise uncleaned) series of one run, data (n_scans, V): the voxel's
    noise autocovariance before cleaning, pooled over runs by the association
    (:func:`bids_vlm.stats.autocorr.lag_sums` of the detrended run). censor: (n_scans,)
    bool frames left out (:func:`censored_frames`): the trend is fitted without them and they
    count as 0. Zero columns (excluded voxels) give zeros."""
    n = data.shape[0]
    kept = np.ones(n, bool) if censor is None else ~np.asarray(censor, bool)
    trend = np.column_stack([np.ones(n), np.linspace(-1.0, 1.0, n)])
    fit = np.linalg.pinv(trend[kept])  # (2, n_kept)
    out = np.zeros((n_lags + 1, data.shape[1]), dtype=np.float32)
    for start in range(0, data.shape[1], CHUNK):  # the detrended copy in chunks too
        part = np.asarray(data[:, start:start + CHUNK], np.float64)
        part = part - trend @ (fit @ part[kept])
        part[~kept] = 0.0
        out[:, start:start + part.shape[1]] = lag_sums(part, [n], n_lags)
    return out


def run_lags(n_scans: int, n_lags: int = 0) -> int:
    """Lags of a run's noise lag sums: enough for the association's lags whatever the other
    runs (``n_lags``, or its default for the shortest run, which is at most this run's)."""
    return max(int(n_lags), default_lags([n_scans]))


