"""Network atlases on CIFTI grayordinates (issue 16): the shipped fsLR 91k Yeo-7 and Yeo-17
(plus the Fedorenko-lab language parcels), or a user's ``--atlas PATH.dlabel.nii`` (networks:
the label names of its first map; labels that share a name form one network; those whose names
start with "vis" / "lang", in any case, count as visual / language for the modality index).

An atlas here is a :class:`~bids_vlm.analysis.atlases.NetworkAtlas` whose ``img`` is a
:class:`GrayordinateLabels`; it is placed on the data by brain structure and vertex / voxel
(:func:`bids_vlm.cifti.labels_on`), never by row position.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from bids_vlm import cifti
from bids_vlm.analysis.atlases import (
    SURFACE_SPACE,
    NetworkAtlas,
    _grouped,
    _safe_name,
    _tsv_labels,
    ATLAS_DIR,
)
from bids_vlm.errors import DataError

YEO7 = ("Visual", "Somatomotor", "DorsalAttention", "VentralAttention", "Limbic",
        "Frontoparietal", "Default")
SURFACE_SHIPPED = ("yeo7", "yeo17")
_SOURCES = {"yeo7": "Yeo et al. 2011, 7 networks (HCP S1200 RSN-networks, fsLR 91k)",
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
                        _grouped(labels), _SOURCES[name], SURFACE_SPACE, visual=visual)


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
