"""CIFTI-2 grayordinates (HCP, fMRIPrep ``--cifti-output``, ciftify): the time series of a
``*_bold.dtseries.nii``, maps written as ``.dscalar.nii`` with the input's brain models, and
network atlases matched to the data by brain structure and vertex / voxel (issue 16).

A grayordinate is a row of the brain models: a vertex of a cortical surface (structure, vertex
number on its mesh) or a subcortical voxel (structure, i j k on its volume grid). Atlases are
matched to data by those keys, never by row position, so data that cover part of the
grayordinates (cortex only, another subcortical set, a flipped or reordered voxel grid) are
labelled correctly; a surface of another mesh density is an error.

Shipped (``bids_vlm/data/atlases/fsLR``, see its PROVENANCE.md): the standard 91k brain models
and, on them, Yeo-7, Yeo-17 and the Fedorenko-lab language parcels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.cifti2 import cifti2_axes as axes

from bids_vlm.atomic import atomic_path
from bids_vlm.errors import DataError

FSLR_DIR = Path(__file__).resolve().parent / "data" / "atlases" / "fsLR"
FSLR_91K = FSLR_DIR / "fsLR_den-91k_atlases.npz"
CIFTI_ATLASES = ("yeo7", "yeo17", "language")
CIFTI_EXTENSIONS = (".dtseries.nii", ".dscalar.nii", ".dlabel.nii")


@dataclass(frozen=True)
class Grayordinates:
    """A dense CIFTI time series: data (T, G) float32, its brain models (G rows), the time
    step of its series axis in seconds (None when the axis is not in seconds)."""

    data: np.ndarray
    brain_models: axes.BrainModelAxis
    step: float | None


def is_cifti(path) -> bool:
    return str(path).endswith(CIFTI_EXTENSIONS)


def _load(path, kind: str):
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ValueError, OSError, ExpatError, ...
        raise DataError(f"cannot read the CIFTI {kind}: {exc}", path) from exc
    if not isinstance(img, nib.Cifti2Image):
        raise DataError(f"not a CIFTI-2 {kind} (a {type(img).__name__})", path)
    return img


def brain_models_of(img, path) -> axes.BrainModelAxis:
    """The brain models (rows) of a dense CIFTI image; DataError when its last axis is not."""
    bm = img.header.get_axis(img.ndim - 1)
    if not isinstance(bm, axes.BrainModelAxis):
        raise DataError(f"the CIFTI's last axis is a {type(bm).__name__}, not brain models "
                        "(a dense file is needed, e.g. *_bold.dtseries.nii)", path)
    return bm


def _first_axis(img, kind, what: str, needed: str, path):
    """The image's first axis when it is a ``kind``; else DataError naming ``what`` it should
    be and the file ``needed``."""
    axis = img.header.get_axis(0)
    if not isinstance(axis, kind):
        raise DataError(f"the first axis is a {type(axis).__name__}, not {what} "
                        f"(a {needed} is needed)", path)
    return axis


def read_dtseries(path) -> Grayordinates:
    """A ``.dtseries.nii``: (T, G) float32 data, its brain models and its series step."""
    img = _load(path, "time series")
    series = _first_axis(img, axes.SeriesAxis, "a time series", ".dtseries.nii", path)
    bm = brain_models_of(img, path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    step = float(series.step) if series.unit == "SECOND" else None
    return Grayordinates(data=data, brain_models=bm, step=step)


def read_dense(path) -> tuple[np.ndarray, bytes]:
    """(data (K, G) float32, the CIFTI XML as bytes) of a dense file, without parsing the
    XML (nibabel's parse takes about 0.3 s for 91k grayordinates): for reading many maps
    that share brain models, compared by their XML."""
    try:
        img = nib.Nifti2Image.from_filename(str(path))
        ext = next(e for e in img.header.extensions if e.get_code() == 32)
    except (StopIteration, Exception) as exc:
        raise DataError(f"cannot read the CIFTI file: {exc}", path) from exc
    xml = getattr(ext, "_raw", None) or ext.content
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data.reshape(-1, data.shape[-1]), bytes(xml)


def read_brain_models(path) -> axes.BrainModelAxis:
    """The brain models of a dense CIFTI file (its data are not read)."""
    img = _load(path, "file")
    return brain_models_of(img, path)


@functools.lru_cache(maxsize=1)
def _fslr_archive() -> dict:
    with np.load(FSLR_91K) as archive:
        return {key: archive[key] for key in archive.files}


def standard_91k() -> axes.BrainModelAxis:
    """HCP's 91,282 grayordinates: fs_LR 32k cortex (medial wall left out) and 19 subcortical
    structures on the MNI152NLin6Asym 2 mm grid, in HCP's row order."""
    z = _fslr_archive()
    n_vert = int(z["n_vertices"])
    bm = (axes.BrainModelAxis.from_surface(z["cortex_left"].astype(int), n_vert, "CortexLeft")
          + axes.BrainModelAxis.from_surface(z["cortex_right"].astype(int), n_vert,
                                             "CortexRight"))
    start = 0
    for name, count in zip(z["structures"], z["counts"]):
        bm = bm + axes.BrainModelAxis(str(name), voxel=z["voxels"][start:start + count].astype(int),
                                      affine=z["affine"],
                                      volume_shape=tuple(int(n) for n in z["volume_shape"]))
        start += count
    return bm


def shipped_labels(name: str) -> np.ndarray:
    """(91282,) int labels of a shipped grayordinate atlas (:data:`CIFTI_ATLASES`) on
    :func:`standard_91k`'s rows; 0 = unlabelled."""
    if name not in CIFTI_ATLASES:
        raise KeyError(f"no grayordinate atlas '{name}' (shipped: {', '.join(CIFTI_ATLASES)})")
    return _fslr_archive()[name].astype(np.int16)


def read_dlabel(path, map_index: int = 0) -> tuple[np.ndarray, dict, axes.BrainModelAxis]:
    """A user atlas ``.dlabel.nii``: ((G,) int labels of map ``map_index``, {label: name}
    without the unlabelled key 0, its brain models)."""
    img = _load(path, "label file")
    labels = _first_axis(img, axes.LabelAxis, "labels", ".dlabel.nii", path)
    bm = brain_models_of(img, path)
    values = np.asarray(img.dataobj)[map_index]
    if not np.allclose(values, np.round(values)):
        raise DataError("label values are not integers", path)
    names = {int(k): str(v[0]) for k, v in labels.label[map_index].items() if int(k) != 0}
    return np.round(values).astype(np.int32), names, bm


def match_rows(data_bm: axes.BrainModelAxis, atlas_bm: axes.BrainModelAxis) -> np.ndarray:
    """(G_data,) the atlas row of each data grayordinate (-1 where the atlas has none), matched
    by structure and vertex (surfaces) or structure and voxel position (volumes).

    A surface structure present in both must have the same number of mesh vertices (another
    density needs an atlas of that density: DataError). Voxels are mapped through both affines
    and must fall on the atlas's grid (same voxel size; flips and shifts are allowed)."""
    out = np.full(len(data_bm), -1, dtype=np.int64)
    atlas = {name: (rows, sub) for name, rows, sub in _structures(atlas_bm)}
    for name, rows, sub in _structures(data_bm):
        if name not in atlas:
            continue
        arows, asub = atlas[name]
        if sub.surface_mask.all():
            out[rows] = _match_vertices(name, sub, arows, asub)
        else:
            out[rows] = _match_voxels(name, sub, data_bm.affine, arows, asub, atlas_bm.affine)
    return out


def _structures(bm):
    """(name, rows (n,), sub-axis) of each structure of the brain models."""
    for name, where, sub in bm.iter_structures():
        yield str(name), np.arange(len(bm))[where], sub


def _match_vertices(name, sub, arows, asub):
    n_data, n_atlas = sub.nvertices[name], asub.nvertices.get(name)
    if n_data != n_atlas:
        raise DataError(f"{name} has {n_data} mesh vertices in the data but {n_atlas} in the "
                        "atlas: the atlas must have the data's surface density")
    lookup = np.full(n_atlas, -1, dtype=np.int64)
    lookup[asub.vertex] = arows
    return lookup[sub.vertex]


def _match_voxels(name, sub, affine, arows, asub, atlas_affine):
    to_atlas = np.linalg.inv(atlas_affine) @ affine
    ijk = nib.affines.apply_affine(to_atlas, sub.voxel)
    if not np.allclose(ijk, np.round(ijk), atol=1e-3):
        raise DataError(f"the voxels of {name} do not fall on the atlas's voxel grid "
                        "(another voxel size or an offset grid)")
    ijk = np.round(ijk).astype(np.int64)
    out = np.full(len(ijk), -1, dtype=np.int64)
    inside = (ijk >= 0).all(1)  # voxels beyond the atlas grid's origin have no atlas row
    if not inside.any() or not len(asub.voxel):
        return out
    shape = np.maximum(asub.voxel.max(0), ijk[inside].max(0)) + 1
    keys = np.ravel_multi_index(asub.voxel.T, shape)
    order = np.argsort(keys)
    wanted = np.ravel_multi_index(ijk[inside].T, shape)
    pos = np.clip(np.searchsorted(keys[order], wanted), 0, len(keys) - 1)
    out[inside] = np.where(keys[order][pos] == wanted, arows[order][pos], -1)
    return out


def labels_on(data_bm, atlas_bm, labels: np.ndarray) -> np.ndarray:
    """(G_data,) the atlas ``labels`` (G_atlas,) at each data grayordinate (0 where none)."""
    rows = match_rows(data_bm, atlas_bm)
    return np.where(rows >= 0, np.asarray(labels)[np.maximum(rows, 0)], 0)


def location(bm: axes.BrainModelAxis, row: int) -> dict:
    """Where grayordinate ``row`` is: {structure, vertex} or {structure, ijk}."""
    name = str(bm.name[row]).replace("CIFTI_STRUCTURE_", "")
    if bm.surface_mask[row]:
        return {"structure": name, "vertex": int(bm.vertex[row])}
    return {"structure": name, "ijk": [int(v) for v in bm.voxel[row]]}


def dscalar_image(maps: np.ndarray, names, bm: axes.BrainModelAxis) -> nib.Cifti2Image:
    """(K, G) or (G,) float32 maps as a dense scalar image with names ``names`` (K,)."""
    maps = np.atleast_2d(np.asarray(maps, dtype=np.float32))
    names = [names] if isinstance(names, str) else list(names)
    if maps.shape != (len(names), len(bm)):
        raise ValueError(f"maps {maps.shape} do not match {len(names)} names x {len(bm)} "
                         "grayordinates")
    matrix = _KnownShape(maps.shape)
    matrix.append(axes.ScalarAxis(names).to_mapping(0))
    matrix.append(_mapping(bm))
    img = nib.Cifti2Image(maps, header=nib.cifti2.Cifti2Header(matrix))
    img.nifti_header.set_intent("ConnDenseScalar")  # nibabel would write ConnUnknown
    return img


class _KnownShape(nib.cifti2.Cifti2Matrix):
    """A CIFTI matrix whose data shape is known: nibabel otherwise rebuilds every axis from
    its XML mapping to check the shape (about 0.1 s per 91k map, several times per save)."""

    def __init__(self, shape):
        super().__init__()
        self._shape = tuple(shape)

    def get_data_shape(self):
        return self._shape


_MAPPING: dict = {}


def _mapping(bm: axes.BrainModelAxis):
    """The CIFTI brain-model index map of ``bm`` (dimension 1), built once per axis object:
    nibabel takes about 0.1 s to build it for the 91k grayordinates, and a unit writes
    hundreds of maps on the same brain models."""
    hit = _MAPPING.get(id(bm))
    if hit is None or hit[0] is not bm:
        _MAPPING.clear()
        hit = _MAPPING[id(bm)] = (bm, bm.to_mapping(1))
    return hit[1]


def write_dscalar(path, maps, names, bm: axes.BrainModelAxis) -> Path:
    """Write ``maps`` (K, G) as ``path`` (``*.dscalar.nii``) through a temporary name."""
    if not str(path).endswith(".dscalar.nii"):
        raise ValueError(f"a dense scalar file name ends in .dscalar.nii, not {path}")
    with atomic_path(path) as tmp:
        staged = Path(str(tmp) + ".dscalar.nii")  # nibabel picks the format from the name
        try:
            nib.save(dscalar_image(maps, names, bm), str(staged))
            staged.replace(tmp)
        finally:
            staged.unlink(missing_ok=True)
    return Path(path)


def dlabel_image(labels: np.ndarray, names: dict, bm: axes.BrainModelAxis,
                 map_name: str = "labels", colours: dict | None = None) -> nib.Cifti2Image:
    """(G,) integer ``labels`` with {label: name} as a dense label image (for atlases)."""
    colours = colours or {}
    table = {0: ("???", (1.0, 1.0, 1.0, 0.0))}
    rng = np.random.default_rng(0)
    for key, name in names.items():
        table[int(key)] = (str(name), tuple(colours.get(key, (*rng.random(3), 1.0))))
    img = nib.Cifti2Image(np.asarray(labels, np.float32)[None],
                          header=(axes.LabelAxis([map_name], [table]), bm))
    img.nifti_header.set_intent("ConnDenseLabel")
    return img
