"""The analysis's "voxels": the in-mask voxels of a NIfTI brain mask (in nilearn's masking
order) or the grayordinates of CIFTI brain models (in row order; ``--space fsLR``).

Every stage works on (frames, V) arrays; only reading the BOLD, writing maps and placing
voxels (peaks, networks, group keys) need to know which. The analysis mask of a unit is
``mask.nii.gz`` (volume) or ``mask.dscalar.nii`` (a map of ones on the runs' brain models).
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from nilearn import masking

from bids_vlm import cifti
from bids_vlm.errors import DataError

VOLUME_MAP = ".nii.gz"
CIFTI_MAP = ".dscalar.nii"


def load(path):
    """The analysis mask of ``path``: a NIfTI image or a CIFTI dscalar image."""
    return nib.load(str(path))


def is_grayordinates(mask) -> bool:
    return isinstance(mask, nib.Cifti2Image)


def brain_models(mask) -> cifti.axes.BrainModelAxis:
    """The brain models of a CIFTI mask (parsed once per image: about 0.1 s for 91k)."""
    bm = getattr(mask, "_bids_vlm_brain_models", None)
    if bm is None:
        bm = mask.header.get_axis(1)
        mask._bids_vlm_brain_models = bm
    return bm


def n_rows(mask) -> int:
    """V: the number of analysed voxels or grayordinates."""
    if is_grayordinates(mask):
        return len(brain_models(mask))
    return int((np.asarray(mask.dataobj) > 0).sum())


def map_name(path, mask) -> str:
    """``path`` (a ``.nii.gz`` map name) with the extension of maps on ``mask``."""
    path = str(path)
    if is_grayordinates(mask) and path.endswith(VOLUME_MAP):
        return path[:-len(VOLUME_MAP)] + CIFTI_MAP
    return path


def rows_ijk(mask) -> np.ndarray:
    """(V, 3) int: each row's voxel indices (i, j, k); (-1, -1, -1) for surface vertices."""
    if is_grayordinates(mask):
        bm = brain_models(mask)
        return np.where(bm.volume_mask[:, None], bm.voxel, -1).astype(np.int64)
    return np.argwhere(np.asarray(mask.dataobj) > 0)


def grayordinate_mask(runs) -> nib.Cifti2Image:
    """The analysis mask of CIFTI runs (RunSpecs): their common brain models, as a dscalar of
    ones. The runs of a unit must have the same grayordinates (DataError naming the first
    that differs)."""
    ref = cifti.read_brain_models(runs[0].bold)
    for run in runs[1:]:
        if cifti.read_brain_models(run.bold) != ref:
            raise DataError(f"the runs of {runs[0].label.split('_run-')[0]} do not have the "
                            f"same grayordinates (brain models) as {runs[0].bold}", run.bold)
    return cifti.dscalar_image(np.ones((1, len(ref)), np.float32), ["mask"], ref)


def load_grayordinates(bold_path, mask) -> np.ndarray:
    """(T, V) float64 of a ``.dtseries.nii`` on the mask's grayordinates (matched by structure
    and vertex / voxel)."""
    series = cifti.read_dtseries(bold_path)
    bm = brain_models(mask)
    if series.brain_models == bm:
        return series.data.astype(np.float64)
    rows = cifti.match_rows(bm, series.brain_models)
    if (rows < 0).any():
        raise DataError(f"{int((rows < 0).sum())} grayordinate(s) of the analysis are missing "
                        "from this run", bold_path)
    return series.data[:, rows].astype(np.float64)


def series_image(data, mask, tr: float):
    """(T, V) float32 time series as an image on ``mask``: a 4D NIfTI or a dtseries."""
    data = np.asarray(data, dtype=np.float32)
    if is_grayordinates(mask):
        img = nib.Cifti2Image(data, header=(cifti.axes.SeriesAxis(
            start=0.0, step=float(tr), size=len(data), unit="SECOND"), brain_models(mask)))
        img.nifti_header.set_intent("ConnDenseSeries")
        return img

    img = masking.unmask(data, mask)
    img.header.set_zooms(img.header.get_zooms()[:3] + (float(tr),))
    img.header.set_xyzt_units("mm", "sec")
    return img


def row_keys(mask) -> np.ndarray:
    """(V,) int64 keys that name each row's place, equal across participants for the same
    voxel (flat index in the grid) or grayordinate (structure, then vertex or flat voxel)."""
    if not is_grayordinates(mask):
        ijk = rows_ijk(mask)
        return np.ravel_multi_index(tuple(ijk.T), mask.shape[:3]).astype(np.int64)
    bm = brain_models(mask)
    # one fixed list of every CIFTI structure: the same code whatever structures a file has
    names = sorted(nib.cifti2.cifti2.CIFTI_BRAIN_STRUCTURES.value_set("ciftiname"))
    code = np.searchsorted(names, bm.name.astype(str)).astype(np.int64)
    place = bm.vertex.astype(np.int64)
    if bm.volume_mask.any():
        place[bm.volume_mask] = np.ravel_multi_index(tuple(bm.voxel[bm.volume_mask].T),
                                                     bm.volume_shape)
    return (code << 40) + place


def peak_columns(mask, peak_rows) -> dict:
    """Columns placing each AN's peak row: peak_i/j/k (-1 for a surface vertex) and, on
    grayordinates, peak_grayordinate, peak_structure and peak_vertex (-1 for a voxel)."""
    peak_rows = np.asarray(peak_rows, np.int64)
    ijk = rows_ijk(mask)
    peak = ijk[peak_rows] if len(ijk) else np.zeros((len(peak_rows), 3), np.int64)
    out = {"peak_i": peak[:, 0], "peak_j": peak[:, 1], "peak_k": peak[:, 2]}
    if is_grayordinates(mask):
        bm = brain_models(mask)
        out.update(peak_grayordinate=peak_rows,
                   peak_structure=[str(n).replace("CIFTI_STRUCTURE_", "")
                                   for n in bm.name[peak_rows]],
                   peak_vertex=bm.vertex[peak_rows].astype(np.int64))
    return out
