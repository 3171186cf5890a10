"""Surface figures of grayordinate maps (``.dscalar.nii``) for the reports: the cortex on the
fs_LR 32k inflated meshes (HCP S1200 group average, shipped in ``data/atlases/fsLR``), left and
right hemispheres, lateral and medial views, with nilearn's ``plot_surf_stat_map``; the medial
wall and vertices the data lack are blank. Subcortical grayordinates are not drawn (the
figure's caption says so)."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
from nilearn import plotting

from bids_vlm.cifti import FSLR_DIR, read_brain_models, read_dense

HEMISPHERES = (("left", "CIFTI_STRUCTURE_CORTEX_LEFT"), ("right", "CIFTI_STRUCTURE_CORTEX_RIGHT"))
NOTE = "cortex on the fs_LR inflated surface; subcortical grayordinates not shown"


@functools.lru_cache(maxsize=1)
def inflated() -> dict:
    """{hemisphere: (coordinates (32492, 3) float64, triangles (64980, 3) int64)}."""
    with np.load(FSLR_DIR / "fsLR_den-32k_inflated.npz") as z:
        return {h: (z[f"inflated_{h}"].astype(np.float64), z[f"faces_{h}"].astype(np.int64))
                for h, _ in HEMISPHERES}


def map_values(paths, reduce: str = "sum"):
    """(G,) the sum or maximum (``reduce``) of the maps of ``paths`` (dscalar files on the
    same brain models; every map of each), or the first map of the first ("first"); and the
    brain models."""
    bm = read_brain_models(paths[0])
    maps = np.concatenate([read_dense(p)[0] for p in (paths[:1] if reduce == "first"
                                                       else paths)]).astype(np.float64)
    values = maps[0] if reduce == "first" else getattr(np, reduce)(maps, axis=0)
    return values, bm


def per_vertex(values, bm, structure: str, n_vertices: int) -> np.ndarray:
    """(n_vertices,) the values of one cortical structure on its mesh, NaN where none."""
    out = np.full(n_vertices, np.nan)
    rows = np.flatnonzero(bm.name == structure)
    out[bm.vertex[rows]] = values[rows]
    return out


def surface_figure(paths, fig_path, title, save, threshold=0.5, cmap="hot",
                   reduce: str = "sum") -> None:
    """Save the 4-view figure of the maps (:func:`map_values`; "first": a label-like layer
    index, -1 = none shown blank) at ``fig_path`` through ``save(figure, path)``."""
    values, bm = map_values(paths, reduce)
    if reduce == "first":  # a layer index, -1 = none: show layers >= 0 only, as layer + 1
        values = np.where(values >= 0, values + 1, 0)
    vmax = max(float(np.nanmax(np.abs(values))) if len(values) else 1.0, 1.0)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), subplot_kw={"projection": "3d"})
    meshes = inflated()
    for col, (hemi, structure) in enumerate(HEMISPHERES):
        coords, faces = meshes[hemi]
        data = per_vertex(values, bm, structure, len(coords))
        for view, ax in zip(("lateral", "medial"), axes[2 * col:2 * col + 2]):
            plotting.plot_surf_stat_map((coords, faces), np.nan_to_num(data), hemi=hemi,
                                        view=view, axes=ax, figure=fig, cmap=cmap,
                                        vmax=vmax, threshold=threshold, colorbar=col == 1
                                        and view == "medial", bg_on_data=False)
            ax.set_title(f"{hemi} {view}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, fig_path)
