"""Stage 5's input: a run's BOLD and the analysis mask, read into in-mask voxel time series.

The brain mask is the derivative's (resampled to the BOLD grid when needed) or nilearn's
``compute_epi_mask`` of raw BOLD; an analysis unit's mask is the intersection of its runs'.
A run's in-mask series are read 32 frames at a time, as nilearn's ``apply_mask`` would give
them; CIFTI runs are read on the mask's grayordinates. Voxels that are constant or not finite
in a run are zeroed (excluded from that run), with a warning. The cleaning itself is in
:mod:`bids_vlm.design.cleaning`.
"""
from __future__ import annotations

import logging
import zlib

import nibabel as nib
import numpy as np
from nilearn import image, masking

from bids_vlm.brainmask import grayordinate_mask, load, load_grayordinates
from bids_vlm.cifti import is_cifti
from bids_vlm.config import BoldConfig
from bids_vlm.errors import DataError
from bids_vlm.inputs.bids import check_affine

LOGGER = logging.getLogger("bids_vlm.design.bold")
STD_CHUNK = 8192  # voxels whose float64 standard deviation is taken at a time


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


def load_bold(bold_path, mask_img, config: BoldConfig = BoldConfig()) -> np.ndarray:
    """In-mask voxel time series of one run, (n_scans, n_voxels) in the image's float type
    (float32 for integer images, as nilearn), smoothed when ``config.smoothing_fwhm``; not
    cleaned. The cleaning and the noise lag sums compute in float64, a chunk of voxels at a
    time (:data:`bids_vlm.design.cleaning.CHUNK`): a float64 copy of a whole run is 1.1 GB at
    2 mm.

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
    constant = np.zeros(data.shape[1], bool)
    for start in range(0, data.shape[1], STD_CHUNK):  # float64, a chunk of voxels at a time
        part = np.asarray(data[:, start:start + STD_CHUNK], np.float64)
        constant[start:start + STD_CHUNK] = part.std(axis=0) < 1e-8
    constant &= ~nonfinite
    if constant.any():
        LOGGER.warning("%s: %d in-mask voxel(s) constant over the run; excluded from it "
                       "(set to 0)", bold_path, int(constant.sum()))
        data[:, constant] = 0.0
    return data


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
