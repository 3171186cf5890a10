"""Networks (METHOD.md 8): which functional networks each AN's BNs fall in, and which it drives.

Networks are (possibly overlapping) sets of voxels of the atlases of
:mod:`bids_vlm.analysis.atlases` (by default the 7 Yeo networks plus the language network),
resampled to the BOLD grid (nearest neighbour). For every AN and network: its BN+ and BN- in
the network, the fraction of its BNs there, and a hypergeometric enrichment p (more BNs in the
network than a random draw of as many in-mask voxels would put there); FDR (Benjamini-Hochberg)
across ANs for each network. An AN *drives* a network when that q <= ``q``.
"""
from __future__ import annotations

import numpy as np
from nilearn import image
from scipy import stats


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


def data_networks(spec: str, mask_img, space: str | None):
    """(network masks over the in-mask voxels or None, the atlases, why they do not fit the
    data's ``space`` or None) for ``--atlas`` ``spec``."""
    from bids_vlm.analysis.atlases import load_networks, space_problem

    atlases = load_networks(spec)
    problem = space_problem(atlases, space)
    return (None if problem else network_masks(atlases, mask_img)), atlases, problem
