"""Networks (METHOD.md 8): which functional networks each AN's BNs fall in, and which it drives.

Networks are (possibly overlapping) sets of voxels: by default the 7 Yeo networks plus the
language network (the union of the Fedorenko-lab language parcels), all in MNI space and
resampled to the BOLD grid (nearest neighbour). For every AN and network: its BN+ and BN- in the
network, the fraction of its BNs there, and a hypergeometric enrichment p (more BNs in the
network than a random draw of as many in-mask voxels would put there); FDR (Benjamini-Hochberg)
across ANs for each network. An AN *drives* a network when that q <= ``q``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn import image
from scipy import stats

ATLAS_DIR = Path(__file__).resolve().parents[1] / "data" / "atlases"
ATLAS_SPACE = "MNI152NLin6Asym"
# template spaces whose coordinates agree with the atlases' MNI space closely enough
MNI_SPACES = ("MNI152NLin6Asym", "MNI152NLin6Sym", "MNI152NLin2009cAsym", "MNI152NLin2009cSym",
              "MNI152NLin2009aAsym", "MNI152NLin2009bAsym", "MNI152Lin", "MNIInfant", "MNI305",
              "MNIColin27", "MNI")
_YEO7_NAMES = {"1_Visual_Area": "Visual", "2_Somatomotor_Area": "Somatomotor",
               "3_Dorsal_Area": "DorsalAttention", "4_Ventral_Area": "VentralAttention",
               "5_Lymbic_Area": "Limbic", "6_Frontoparietal_Area": "Frontoparietal",
               "7_Default_Network_Area": "Default"}


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


@dataclass(frozen=True)
class NetworkAtlas:
    """Named networks as voxel sets of one image: {name: voxel values that belong to it}."""

    img: object
    networks: dict
    source: str


def default_networks() -> list[NetworkAtlas]:
    """Yeo-7 plus the language network (METHOD.md 8)."""
    yeo = nib.load(ATLAS_DIR / "Yeo-7_space-MNI152NLin6_res-2x2x2.nii.gz")
    labels = _csv_labels(ATLAS_DIR / "Yeo-7.csv")
    lang = nib.load(ATLAS_DIR / "langParcels_symmetrical.nii.gz")
    return [NetworkAtlas(yeo, {_YEO7_NAMES.get(n, n): (v,) for v, n in labels.items()},
                         "Yeo et al. 2011, 7 networks (neuroparc)"),
            NetworkAtlas(lang, {"Language": tuple(language_labels())},
                         "Fedorenko-lab language parcels (Wolna, Wright & Fedorenko 2025)")]


def is_mni(space: str | None) -> bool:
    return bool(space) and space.startswith(MNI_SPACES)


def network_masks(atlases, mask_img) -> dict:
    """{network: (V,) bool over the in-mask voxels of ``mask_img``} (atlases resampled to its
    grid with nearest-neighbour interpolation)."""
    inside = np.asarray(mask_img.dataobj) > 0
    out = {}
    for atlas in atlases:
        data = np.asarray(image.resample_to_img(atlas.img, mask_img, interpolation="nearest",
                                                force_resample=True,
                                                copy_header=True).dataobj)[inside]
        for name, values in atlas.networks.items():
            out[name] = np.isin(data, values)
    return out


def bh(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of a 1-D array."""
    return stats.false_discovery_control(pvalues) if len(pvalues) else pvalues


def enrichment(an_index, voxel_index, r, n_an: int, masks: dict, q: float = 0.05) -> dict:
    """Per network, for the significant entries (an_index, voxel_index, r) of n_an ANs:

    {network: {"n_pos", "n_neg" (N,) BN+ / BN- in the network, "frac" (N,) share of the AN's BNs
    in it, "p" (N,) hypergeometric P(>= that many), "q" (N,) BH across ANs, "drives" (N,) bool}}.
    """
    n_vox = len(next(iter(masks.values())))
    n_bn = np.bincount(an_index, minlength=n_an)
    out = {}
    for name, member in masks.items():
        inside = member[voxel_index]
        n_pos = np.bincount(an_index[inside & (r > 0)], minlength=n_an)
        n_neg = np.bincount(an_index[inside & (r < 0)], minlength=n_an)
        k = n_pos + n_neg
        p = np.where(n_bn > 0, stats.hypergeom.sf(k - 1, n_vox, int(member.sum()), n_bn), 1.0)
        qv = bh(p)
        out[name] = {"n_pos": n_pos, "n_neg": n_neg,
                     "frac": np.divide(k, n_bn, out=np.zeros(n_an), where=n_bn > 0),
                     "p": p, "q": qv, "drives": (qv <= q) & (k > 0)}
    return out
