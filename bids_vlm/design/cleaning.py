"""Stage 5: BOLD -> cleaned in-mask voxel time series (nilearn masking and signal cleaning).

Default confound strategy for fMRIPrep confounds (docs/METHOD.md 5): the 6 motion parameters and
their temporal derivatives, the first ``n_acompcor`` aCompCor components and fMRIPrep's cosine
drift terms; plus linear detrending, a high-pass at ``high_pass`` Hz (discrete cosine basis)
and a z-score per run. fMRIPrep's ``non_steady_state_outlier_XX`` columns (one-hot spikes of
the volumes acquired before the magnetisation reached steady state) are always regressed out:
each censors its frame on both sides (its cleaned value is 0 in the BOLD and in every AN
regressor) and costs one degree of freedom; the noise lag sums skip those frames. The AN regressors get the same cleaning (:func:`clean_signals`).
Raw BOLD (no derivative) is masked and cleaned the same way without confounds; it is not
motion-corrected or normalised, and the outputs say so.
"""
from __future__ import annotations

import logging
import re
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import image, masking, signal

from bids_vlm.brainmask import grayordinate_mask, load, load_grayordinates
from bids_vlm.cifti import is_cifti
from bids_vlm.config import BoldConfig
from bids_vlm.errors import DataError
from bids_vlm.inputs.bids import check_affine
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


def load_mask(bold_path, mask_path=None):
    """The brain mask: the derivative's, resampled to the BOLD grid if needed, else computed
    from the mean EPI with nilearn's ``compute_epi_mask``."""
    bold = nib.load(bold_path)
    if mask_path is None:
        mask = masking.compute_epi_mask(bold)
        if not np.asarray(mask.dataobj).any():
            raise DataError("nilearn's compute_epi_mask found no brain in the mean EPI; provide "
                            "a brain mask (fMRIPrep derivatives, desc-brain_mask)", bold_path)
        return mask
    try:
        mask = nib.load(mask_path)
        data = np.asarray(mask.dataobj)
    except Exception as exc:  # nibabel raises several types for empty or truncated files
        raise DataError(f"cannot read the brain mask: {exc}", mask_path) from exc
    check_affine(mask.affine, mask_path)
    if data.ndim != 3 and not (data.ndim == 4 and data.shape[3] == 1):
        raise DataError(f"the brain mask must be a 3D image, shape is {data.shape}", mask_path)
    if not (data > 0).any():
        raise DataError("the brain mask is empty", mask_path)
    if mask.shape[:3] != bold.shape[:3] or not np.allclose(mask.affine, bold.affine, atol=1e-3):
        LOGGER.warning("%s: mask grid differs from the BOLD grid; resampled (nearest)", mask_path)
        mask = image.resample_to_img(mask, image.index_img(bold, 0), interpolation="nearest",
                                     force_resample=True, copy_header=True)
        data = np.asarray(mask.dataobj)
        if not (data > 0).any():
            raise DataError(f"the brain mask does not overlap the BOLD image {bold_path} "
                            "(another space or field of view?)", mask_path)
    data = data.reshape(data.shape[:3]) > 0
    return nib.Nifti1Image(data.astype(np.uint8), mask.affine)


def clean_bold(bold_path, mask_img, tr, confounds_path=None, config: BoldConfig = BoldConfig()):
    """Cleaned voxel time series of one run: (n_scans, n_voxels) float32, z-scored
    (:func:`load_bold` then :func:`clean_signals` with the run's confounds)."""
    data = load_bold(bold_path, mask_img, config)
    confounds = read_confounds(confounds_path, data.shape[0], config)
    return clean_signals(data, tr, confounds, config)


def load_bold(bold_path, mask_img, config: BoldConfig = BoldConfig()) -> np.ndarray:
    """In-mask voxel time series of one run, (n_scans, n_voxels) in the image's float type
    (float32 for integer images, as nilearn), smoothed when ``config.smoothing_fwhm``; not
    cleaned. The cleaning and the noise lag sums compute in float64, a chunk of voxels at a
    time (:data:`CHUNK`): a float64 copy of a whole run is 1.1 GB at 2 mm.

    Voxels that are constant over the run (e.g. outside the field of view) or hold NaN or inf
    values come out as zeros (a warning gives their number): excluded from this run's data; a
    voxel excluded from every run has statistics 0 (never significant).
    """
    smoothing = config.smoothing_fwhm or None
    if str(bold_path).endswith(".dtseries.nii"):
        return _load_grayordinates(bold_path, mask_img, smoothing)
    try:
        bold = nib.load(bold_path, keep_file_open=True)
        data = masked_series(bold, mask_img)
        nonfinite = ~np.isfinite(data).all(axis=0)  # before smoothing spreads them
        if smoothing:  # smooth_img sets NaN and inf to 0 first
            data = masking.apply_mask(image.smooth_img(bold, smoothing), mask_img)
    except (EOFError, OSError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"cannot read the BOLD data (truncated or corrupted?): {exc}",
                        bold_path) from exc
    return _exclude_bad(data, nonfinite, bold_path)


FRAMES = 32  # volumes read from a file at a time (a block of 32 at 2 mm: 139 MB)


def masked_series(bold, mask_img, frames: int = FRAMES) -> np.ndarray:
    """(n_scans, n_voxels) in-mask series of a 4D image (float32, or float64 for a float64
    image), voxels in the order of nilearn's ``apply_mask`` and with its values
    (``ensure_finite=False``).

    nilearn first copies the whole 4D grid into C order (for its smoothing); unsmoothed, that
    copy (1.3 GB a run of 300 frames at 2 mm) took most of the load. Here the in-mask voxels
    are taken ``frames`` volumes at a time as nibabel reads them (Fortran order: each volume
    contiguous): a gzipped file read whole took twice its 4D size (Python's gzip copies
    what it decompresses). Load the image with ``keep_file_open=True`` so that the blocks
    continue one decompression (otherwise each block starts the file again). A mask whose
    shape or affine differs from the image's goes through ``apply_mask``, which raises its
    error."""
    mask, mask_affine = masking.load_mask_img(mask_img)
    if (getattr(bold, "ndim", 0) != 4 or bold.shape[:3] != mask.shape
            or not np.allclose(mask_affine, bold.affine)):
        return _floating(masking.apply_mask(bold, mask_img, ensure_finite=False))
    index = np.flatnonzero(mask)  # C order, as nilearn's series[mask]
    f_index = np.ravel_multi_index(np.unravel_index(index, mask.shape), mask.shape, order="F")
    n_scans = bold.shape[3]
    step = frames if nib.is_proxy(bold.dataobj) else n_scans  # in memory: one block
    out = None
    for start in range(0, n_scans, step):
        block = np.asanyarray(bold.dataobj[..., start:start + step])
        if block.dtype.kind != "f":  # as nilearn: integers become float32 first
            block = block.astype(np.float32)
        if out is None:
            out = np.empty((n_scans, index.size), block.dtype)
        if block.flags.f_contiguous:
            rows, cols = block.reshape(-1, block.shape[3], order="F").T, f_index
        else:
            rows, cols = block.reshape(-1, block.shape[3]).T, index  # (t, X*Y*Z)
        np.take(rows, cols, axis=1, out=out[start:start + block.shape[3]], mode="clip")
    return out


def _floating(data: np.ndarray) -> np.ndarray:
    """data as float32 unless it is float64 already."""
    return data if data.dtype == np.float64 else data.astype(np.float32, copy=False)


SMOOTHING_REFUSED = ("is not applied to CIFTI grayordinates (smoothing on the surface is a "
                     "preprocessing step, e.g. wb_command -cifti-smoothing); leave it at 0")


def _load_grayordinates(bold_path, mask, smoothing) -> np.ndarray:
    if smoothing:
        raise DataError(f"--smoothing-fwhm {smoothing:g} {SMOOTHING_REFUSED}", bold_path)
    mask = mask if isinstance(mask, nib.Cifti2Image) else load(mask)
    data = load_grayordinates(bold_path, mask)
    return _exclude_bad(data, ~np.isfinite(data).all(axis=0), bold_path)


def _exclude_bad(data, nonfinite, bold_path) -> np.ndarray:
    """Zero the voxels with NaN / inf values or constant over the run (warning each)."""
    if nonfinite.any():  # the whole voxel: zeros in some frames would fake a signal
        LOGGER.warning("%s: %d in-mask voxel(s) with NaN or inf values; excluded from this "
                       "run (set to 0)", bold_path, int(nonfinite.sum()))
        data[:, nonfinite] = 0.0
    data = _floating(data)
    constant = np.concatenate([np.asarray(part, np.float64).std(axis=0) < 1e-8
                               for part in _chunks(data)]) & ~nonfinite
    if constant.any():
        LOGGER.warning("%s: %d in-mask voxel(s) constant over the run; excluded from it "
                       "(set to 0)", bold_path, int(constant.sum()))
        data[:, constant] = 0.0
    return data


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


def noise_path(cleaned_path) -> str:
    """Where a run's noise lag sums are kept: beside its cleaned series (``_noise.npy``)."""
    return str(cleaned_path).replace("_cleaned.npy", "_noise.npy")


def pooled_noise_sums(cleaned_files) -> np.ndarray:
    """(K + 1, V) the runs' noise lag sums (:func:`noise_path` of each cleaned file) summed
    over runs, K the smallest number of lags any run kept."""
    parts = [np.load(noise_path(f)) for f in cleaned_files]
    lags = min(p.shape[0] for p in parts)
    return sum(p[:lags].astype(np.float64) for p in parts)


def load_cleaned(cleaned_files) -> np.ndarray:
    """(sum n_scans, V): the runs' cleaned BOLD (the clean stage's ``_cleaned.npy`` files),
    concatenated in the order given: each file read straight into its rows (no run held
    twice; read, not memory-mapped, because a mapped file's pages count in the process's
    resident memory while it is copied: the BOLD twice over at load time)."""
    heads = [_npy_head(f) for f in cleaned_files]
    out = np.empty((sum(shape[0] for shape, _, _ in heads), *heads[0][0][1:]),
                   np.result_type(*(dtype for _, dtype, _ in heads)))
    start = 0
    for path, (shape, dtype, offset) in zip(cleaned_files, heads):
        if shape[1:] != out.shape[1:]:
            raise ValueError(f"cleaned runs of different widths: {shape[1:]} and "
                             f"{out.shape[1:]}")
        rows = out[start:start + shape[0]]
        if dtype == out.dtype and offset is not None:
            _read_into(path, offset, rows)
        else:  # another type or layout: converted as NumPy reads it
            rows[...] = np.load(path, mmap_mode="r")
        start += shape[0]
    return out


def _npy_head(path) -> tuple:
    """(shape, dtype, offset of the data or None when not C-ordered plain data) of a .npy
    file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        plain = not fortran and not dtype.hasobject and len(shape) >= 1
        return tuple(shape), dtype, f.tell() if plain else None


def _read_into(path, offset: int, out: np.ndarray) -> None:
    """The bytes of ``path`` from ``offset`` into the C-contiguous ``out``, all of them."""
    view, done = memoryview(out).cast("B"), 0  # raises unless out is C-contiguous
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"{path}: the file ends before its {out.shape} array")
            done += n


def unit_mask(runs):
    """The analysis mask of an analysis unit's runs (RunSpecs): the intersection of their brain
    masks (:func:`load_mask`; DataError when the runs are not on one grid), or for CIFTI runs
    their grayordinates (a dscalar image, :func:`bids_vlm.brainmask.grayordinate_mask`)."""
    if any(is_cifti(r.bold) for r in runs):
        return grayordinate_mask(runs)
    masks = [load_mask(r.bold, r.mask) for r in runs]
    ref = masks[0]
    for run, mask in zip(runs, masks):
        if mask.shape != ref.shape or abs(mask.affine - ref.affine).max() > 1e-3:
            raise DataError(f"the runs of {runs[0].label.split('_run-')[0]} are not on one grid "
                            f"(first run {ref.shape}, this run {mask.shape})", run.bold)
    return masking.intersect_masks(masks, threshold=1.0, connected=False) if len(masks) > 1 \
        else ref
