"""Brain-map figures of the reports: volume maps (nilearn's glass brain in template space,
stat maps over the mean EPI otherwise) and grayordinate maps (the inflated fs_LR surfaces,
:mod:`bids_vlm.reports.surface`), found by their sidecars; figures saved through a temporary
name."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nilearn import image, plotting  # noqa: E402

from bids_vlm.derivatives import atomic_path  # noqa: E402
from bids_vlm.reports.surface import surface_figure

TEMPLATE_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym", "MNI152NLin2009cSym", "MNI")
ENCODING_R_SHOWN = 0.1  # the encoding r figures show voxels from this r
MAP_EXTENSIONS = (".nii.gz", ".dscalar.nii")  # volume maps, grayordinate maps


def count_maps(folder, prefix, model, stat="bncount") -> dict:
    """{stream: [map paths]} of one unit's ``stat`` maps of ``model`` (from their sidecars)."""
    found = defaultdict(list)
    for path in maps(folder, f"{prefix}_desc-*_stat-{stat}_statmap"):
        side = map_sidecar(path)
        if side.get("Model") == model and "Layer" in side and "Stream" in side:
            # per-layer maps of one stream only (not the banded model's)
            found[side["Stream"]].append(path)
    return dict(found)


def maps(folder, pattern) -> list:
    """The maps matching ``pattern`` + a map extension in ``folder``, sorted."""
    return sorted(p for ext in MAP_EXTENSIONS for p in Path(folder).glob(pattern + ext))


def map_sidecar(path) -> dict:
    """The JSON sidecar of a map (``.nii.gz`` or ``.dscalar.nii``)."""
    name = str(path)
    stem = next(name[:-len(e)] for e in MAP_EXTENSIONS if name.endswith(e))
    return json.loads(Path(stem + ".json").read_text())


def background(sources, space):
    """The background of volume maps: None in template space (nilearn's MNI template) or for
    grayordinates, else the mean of the first source run."""
    if space and space.startswith(TEMPLATE_SPACES):
        return None  # nilearn's MNI template
    if sources and Path(sources[0]).exists() and not sources[0].endswith(".dtseries.nii"):
        return image.mean_img(sources[0], copy_header=True)
    return None


def brain_figure(paths, fig_path, title, background, space, threshold=0.5, cmap="hot",
                 reduce="sum"):
    """The maps' sum, maximum or first map (``reduce``: "sum", "max", "first"; "first" for a
    label-like layer index, -1 = none, shown as layer + 1) over a background; glass brain in
    template space; grayordinate maps on the inflated fs_LR surface
    (:mod:`bids_vlm.reports.surface`)."""
    if str(paths[0]).endswith(".dscalar.nii"):
        return surface_figure(paths, fig_path, title, save_figure, threshold=threshold, cmap=cmap,
                              reduce=reduce)
    img = (image.load_img(paths[0]) if reduce == "first" else image.math_img(
        f"np.{reduce}(imgs, axis=-1)", imgs=image.concat_imgs(paths)))
    data = img.get_fdata()
    vmax = max(float(np.abs(data).max()), 1.0)
    kwargs = {"display_mode": "z", "cut_coords": 5, "title": title, "colorbar": True,
              "vmax": vmax, "cmap": cmap, "draw_cross": False}
    if reduce == "first":  # a label-like map (layer index, -1 = none): show layers >= 0 only
        img = image.new_img_like(img, np.where(data >= 0, data + 1, 0))
        kwargs["vmax"] = vmax + 1
    if background is None and space and space.startswith(TEMPLATE_SPACES):
        display = plotting.plot_glass_brain(img, display_mode="lyrz", title=title,
                                            threshold=threshold, colorbar=True,
                                            vmax=kwargs["vmax"], cmap=cmap)
    elif background is None:
        display = plotting.plot_img(img, **kwargs)
    else:
        display = plotting.plot_stat_map(img, bg_img=background, threshold=threshold, **kwargs)
    save_figure(display, fig_path)


def save_figure(figure, path):
    path = Path(path)
    with atomic_path(path) as tmp:
        target = str(tmp) + ".png"
        figure.savefig(target, dpi=90)
        Path(target).replace(tmp)
    if hasattr(figure, "close"):
        figure.close()
    plt.close("all")
