"""Network atlases (docs/METHOD.md 8): the shipped ones, a user's, and whether they fit the data.

Shipped atlases (``bids_vlm/data/atlases``, MNI152NLin6Asym, 2 mm, see PROVENANCE.md there):
``yeo7`` (default), ``yeo17``, ``schaefer200`` and ``schaefer400`` (parcels named with their
7-network labels, e.g. ``LH_Vis_1``), each with the language network (the union of the
Fedorenko-lab language parcels) added. A user atlas is ``--atlas PATH.nii.gz``: an integer label
image with a BIDS-style labels TSV next to it (the same name with ``.tsv`` instead of
``.nii.gz`` / ``.nii``, columns ``index`` and ``name``; rows that share a name form one network).
Its space is the ``space-`` entity of its file name, when it has one.

Shipped atlases fit MNI-family data only; native-space data (T1w, func or no space entity) get
network analyses only with a user atlas (assumed to be in the data's space unless its name says
otherwise).

On CIFTI grayordinates: the shipped fsLR 91k Yeo-7 and Yeo-17 (plus the Fedorenko-lab
language parcels), or a user's ``--atlas PATH.dlabel.nii`` (networks: the label names of its
first map; labels that share a name form one network; those whose names start with "vis" /
"lang", in any case, count as visual / language for the modality index). Such an atlas is a
:class:`NetworkAtlas` whose ``img`` is a :class:`GrayordinateLabels`; it is placed on the data
by brain structure and vertex / voxel (:func:`bids_vlm.cifti.labels_on`), never by row
position.
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd

from bids_vlm import cifti
from bids_vlm.names import entity
from bids_vlm.errors import DataError

ATLAS_DIR = Path(__file__).resolve().parents[1] / "data" / "atlases"
ATLAS_SPACE = "MNI152NLin6Asym"
# template spaces whose coordinates agree with the atlases' MNI space closely enough
MNI_SPACES = ("MNI152NLin6Asym", "MNI152NLin6Sym", "MNI152NLin2009cAsym", "MNI152NLin2009cSym",
              "MNI152NLin2009aAsym", "MNI152NLin2009bAsym", "MNI152Lin", "MNIInfant", "MNI305",
              "MNIColin27", "MNI")
SHIPPED = ("yeo7", "yeo17", "schaefer200", "schaefer400")
SURFACE_SPACE = "fsLR"  # the space of CIFTI grayordinates (and of the .dlabel.nii atlases)
_YEO7_NAMES = {"1_Visual_Area": "Visual", "2_Somatomotor_Area": "Somatomotor",
               "3_Dorsal_Area": "DorsalAttention", "4_Ventral_Area": "VentralAttention",
               "5_Lymbic_Area": "Limbic", "6_Frontoparietal_Area": "Frontoparietal",
               "7_Default_Network_Area": "Default"}
_SOURCES = {"yeo7": "Yeo et al. 2011, 7 networks (neuroparc)",
            "yeo17": "Yeo et al. 2011, 17 networks (neuroparc; names from Yeo-17_labels.tsv)",
            "schaefer200": "Schaefer et al. 2018, 200 parcels, 7-network labels (neuroparc)",
            "schaefer400": "Schaefer et al. 2018, 400 parcels, 7-network labels (neuroparc)"}


@dataclass(frozen=True)
class NetworkAtlas:
    """Named networks as voxel sets of one image: {name: voxel values that belong to it}.

    space: the atlas's template space (None: not stated, assumed to be the data's);
    visual / language: the networks the modality specificity index counts as such."""

    img: object
    networks: dict
    source: str
    space: str | None = ATLAS_SPACE
    visual: tuple = ()
    language: tuple = ()


def language_labels() -> dict:
    """{voxel value: 'left IFG orbitalis', ...} of the language atlas (value v > 13 is the
    right-hemisphere parcel on row v - 5 of labels_symmetrical.txt)."""
    rows = {}
    with open(ATLAS_DIR / "labels_symmetrical.txt") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            rows[int(row["roiNumber"])] = f"{row['hemisphere']} {row['label'].strip()}"
    return {(n if n <= 13 else n + 5): name for n, name in rows.items()}


def _csv_labels(path) -> dict:
    with open(path) as handle:
        return {int(v): name for v, name in csv.reader(handle) if int(v) > 0}


def _tsv_labels(path) -> dict:
    table = pd.read_csv(path, sep="\t")
    return dict(zip(table["index"].astype(int), table["name"].astype(str)))


def _grouped(labels: dict) -> dict:
    """{value: name} -> {name: (values,)}, in the order of first appearance."""
    out = {}
    for value, name in labels.items():
        out.setdefault(name, []).append(int(value))
    return {name: tuple(values) for name, values in out.items()}


def language_network() -> NetworkAtlas:
    return NetworkAtlas(nib.load(ATLAS_DIR / "langParcels_symmetrical.nii.gz"),
                        {"Language": tuple(language_labels())},
                        "Fedorenko-lab language parcels (Wolna, Wright & Fedorenko 2025)",
                        language=("Language",))


def shipped_atlas(name: str) -> NetworkAtlas:
    """One of :data:`SHIPPED` (without the language network)."""
    if name == "yeo7":
        labels = {v: _YEO7_NAMES[n] for v, n in _csv_labels(ATLAS_DIR / "Yeo-7.csv").items()}
        visual = ("Visual",)
    elif name == "yeo17":
        # not Yeo-17.csv: its names do not follow the volume's values (PROVENANCE.md)
        labels = _tsv_labels(ATLAS_DIR / "Yeo-17_labels.tsv")
        visual = ("VisCent", "VisPeri")
    elif name in ("schaefer200", "schaefer400"):
        table = pd.read_csv(ATLAS_DIR / f"Schaefer{name[8:]}_7Networks_labels_derived.tsv",
                            sep="\t")
        labels = dict(zip(table["index"], table["name"].str.removeprefix("7Networks_")))
        visual = tuple(n for n in labels.values() if "_Vis_" in n)
    else:
        raise ValueError(f"unknown atlas {name!r} (choose from {', '.join(SHIPPED)})")
    stem = {"yeo7": "Yeo-7", "yeo17": "Yeo-17"}.get(name, f"Schaefer{name[8:]}")
    img = nib.load(ATLAS_DIR / f"{stem}_space-MNI152NLin6_res-2x2x2.nii.gz")
    return NetworkAtlas(img, _grouped(labels), _SOURCES[name], visual=visual)


def labels_path(atlas_path) -> Path:
    """The labels TSV of a user atlas: its name with ``.tsv`` for ``.nii.gz`` / ``.nii``."""
    path = Path(atlas_path)
    stem = re.sub(r"\.nii(\.gz)?$", "", path.name)
    return path.with_name(stem + ".tsv")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_+.-]+", "_", name.strip()).strip("_")


def user_atlas(path) -> NetworkAtlas:
    """A user's label image and its labels TSV; DataError (exit 64) naming the file when
    either cannot be read or they do not fit. Names keep letters, digits and ``_+.-``."""
    path = Path(path)
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for missing / corrupt files
        raise DataError(f"cannot read the atlas image ({exc}); --atlas takes a label image "
                        f"or one of {', '.join(SHIPPED)}", path) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or not np.allclose(data, np.round(data)):
        raise DataError(f"an atlas must be a 3-D image of integer labels (shape {data.shape})",
                        path)
    tsv = labels_path(path)
    if not tsv.is_file():
        raise DataError(f"the atlas {path.name} needs a labels TSV next to it (columns index "
                        "and name)", tsv)
    try:
        table = pd.read_csv(tsv, sep="\t", dtype={"name": str})
        labels = {int(i): _safe_name(n) for i, n in zip(table["index"], table["name"])}
    except (KeyError, ValueError, TypeError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read the labels (a TSV with columns index and name): {exc}",
                        tsv) from exc
    present = set(np.unique(data.astype(np.int64)).tolist())
    if not labels or not all(labels.values()) or not present & set(labels):
        raise DataError(f"the labels do not name any value of the atlas {path.name} (values "
                        f"{sorted(present - {0})[:10]}...)", tsv)
    networks = _grouped(labels)
    return NetworkAtlas(nib.Nifti1Image(data.astype(np.int32), img.affine), networks,
                        f"user atlas {path}", entity(path.name, "space"),
                        visual=tuple(n for n in networks if n == "Visual"),
                        language=tuple(n for n in networks if n == "Language"))


def load_networks(spec: str = "yeo7", grayordinates: bool = False) -> list[NetworkAtlas]:
    """The atlases of ``--atlas``: a shipped name (plus the language network) or a user
    atlas path; ``grayordinates``: for CIFTI data (the shipped fsLR 91k atlases,
    :func:`load_surface_networks`)."""
    if str(spec).endswith(".dlabel.nii") or grayordinates:
        return load_surface_networks(spec)
    if spec in SHIPPED:
        return [shipped_atlas(spec), language_network()]
    return [user_atlas(spec)]


def default_networks() -> list[NetworkAtlas]:
    """Yeo-7 plus the language network (docs/METHOD.md 8)."""
    return load_networks("yeo7")


def atlas_digest(spec: str) -> str:
    """Check ``--atlas`` (DataError naming the file) and return a hash of a user atlas's files
    ('' for a shipped atlas), so that a changed atlas reruns the nodes that use it."""
    if spec in SHIPPED:
        return ""
    load_networks(spec)
    digest = hashlib.sha1()
    for path in (Path(spec),) + (() if spec.endswith(".dlabel.nii") else (labels_path(spec),)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_mni(space: str | None) -> bool:
    return bool(space) and space.startswith(MNI_SPACES)


def space_problem(atlases, data_space: str | None) -> str | None:
    """Why the atlases cannot be used on data in ``data_space`` (None: they can)."""
    shown = data_space or "native (no space entity)"
    for atlas in atlases:
        if atlas.space is None or atlas.space == data_space or (
                is_mni(atlas.space) and is_mni(data_space)):
            continue
        hint = ("give MNI-space fMRIPrep outputs, or --atlas PATH.nii.gz (with its labels TSV) "
                "in the data's space" if data_space != SURFACE_SPACE else
                "on grayordinates the atlas must be a CIFTI label file (--atlas PATH.dlabel.nii, "
                "or yeo7, yeo17)")
        return (f"network analyses skipped: the data are in {shown} space and the atlas "
                f"({atlas.source}) in {atlas.space}; {hint}")
    return None


def space_description(atlases, data_space: str | None) -> dict:
    """Sidecar fields naming the atlases and both spaces."""
    return {"Atlas": "; ".join(a.source for a in atlases),
            "AtlasSpace": "; ".join(dict.fromkeys(a.space or "not stated (assumed the data's)"
                                             for a in atlases)),
            "DataSpace": data_space or "native (no space entity)"}


# --- on CIFTI grayordinates ---

YEO7 = ("Visual", "Somatomotor", "DorsalAttention", "VentralAttention", "Limbic",
        "Frontoparietal", "Default")
SURFACE_SHIPPED = ("yeo7", "yeo17")
_SURFACE_SOURCES = {"yeo7": "Yeo et al. 2011, 7 networks (HCP S1200 RSN-networks, fsLR 91k)",
            "yeo17": "Yeo et al. 2011, 17 networks (HCP S1200 RSN-networks, fsLR 91k; names "
                     "from Yeo-17_labels.tsv)"}


class GrayordinateLabels(NamedTuple):
    """(G,) integer labels on CIFTI brain models (G rows)."""

    labels: np.ndarray
    brain_models: object


def load_surface_networks(spec: str) -> list[NetworkAtlas]:
    """The grayordinate atlases of ``--atlas`` ``spec`` (module doc); DataError for a shipped
    atlas that has no grayordinate version or a volume atlas."""
    if spec in SURFACE_SHIPPED:
        return [shipped_surface_atlas(spec), surface_language_network()]
    if str(spec).endswith(".dlabel.nii"):
        return [user_dlabel(spec)]
    raise DataError(f"--atlas {spec}: not available on CIFTI grayordinates (shipped there: "
                    f"{', '.join(SURFACE_SHIPPED)}; or a label file PATH.dlabel.nii)", spec)


def shipped_surface_atlas(name: str) -> NetworkAtlas:
    if name == "yeo7":
        labels, visual = dict(enumerate(YEO7, start=1)), ("Visual",)
    else:
        labels, visual = _tsv_labels(ATLAS_DIR / "Yeo-17_labels.tsv"), ("VisCent", "VisPeri")
    return NetworkAtlas(GrayordinateLabels(cifti.shipped_labels(name), cifti.standard_91k()),
                        _grouped(labels), _SURFACE_SOURCES[name], SURFACE_SPACE, visual=visual)


def surface_language_network() -> NetworkAtlas:
    values = np.unique(cifti.shipped_labels("language"))
    return NetworkAtlas(GrayordinateLabels(cifti.shipped_labels("language"),
                                           cifti.standard_91k()),
                        {"Language": tuple(int(v) for v in values if v > 0)},
                        "Fedorenko-lab language parcels (Wolna, Wright & Fedorenko 2025), "
                        "sampled at the fsLR 91k grayordinates", SURFACE_SPACE,
                        language=("Language",))


def user_dlabel(path) -> NetworkAtlas:
    """A user's ``.dlabel.nii`` (first map); DataError naming it when it cannot be read or
    labels nothing."""
    labels, names, bm = cifti.read_dlabel(path)
    names = {k: _safe_name(v) for k, v in names.items() if _safe_name(v)}
    if not names or not set(np.unique(labels)) & set(names):
        raise DataError("the label file names no label that its map uses", path)
    networks = _grouped(names)
    return NetworkAtlas(GrayordinateLabels(labels, bm), networks, f"user atlas {path}",
                        SURFACE_SPACE,
                        visual=tuple(n for n in networks if re.match(r"vis", n, re.I)),
                        language=tuple(n for n in networks if re.match(r"lang", n, re.I)))


def surface_network_masks(atlases, data_bm) -> dict:
    """{network: (G,) bool over the data's grayordinates}."""
    out = {}
    for atlas in atlases:
        values = cifti.labels_on(data_bm, atlas.img.brain_models, atlas.img.labels)
        for name, members in atlas.networks.items():
            out[name] = np.isin(values, members)
    return out
