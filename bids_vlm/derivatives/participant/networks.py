"""Derivatives of the network analyses of one unit: which atlas fits the data, the hierarchy
table (mean preferred depth per network) and the virtual lesion table (computed by
:mod:`bids_vlm.analysis.layers`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from bids_vlm.analysis.atlases import space_description
from bids_vlm.analysis.hierarchy import preferred_depth
from bids_vlm.analysis.lesion import COLUMNS
from bids_vlm.analysis.networks import NULL_NOTE, STOP_AT, data_networks
from bids_vlm.analysis.spin import NOTE as SPIN_NOTE
from bids_vlm.brainmask import is_grayordinates
from bids_vlm.derivatives.io import write_json, write_tsv
from bids_vlm.derivatives.participant.common import output_model_name
from bids_vlm.names import bids_name, desc_label

LOGGER = logging.getLogger("bids_vlm")

HIERARCHY_COLUMNS = {
    "stream": "image, text, cross-image or cross-text",
    "network": "network of the atlas",
    "n_layers": "layers of the stream (the depth's denominator is n_layers - 1)",
    "n_voxels": "in-mask voxels of the network",
    "n_voxels_with_layer": ("of those, voxels with a preferred layer (the best layer's held-out r "
                            "significant: see PreferredLayerTest)"),
    "mean_preferred_layer": "mean preferred layer index over those voxels",
    "mean_preferred_depth": "mean relative depth layer / (n_layers - 1) of the preferred layer "
                            "(0: first layer, 1: last) over those voxels",
    "sd_preferred_depth": "standard deviation of that relative depth over those voxels",
}
LESION_COLUMNS = {
    "network": "network of the atlas",
    "stream": "image, text, cross-image or cross-text",
    "layer": "the lesioned layer: the stream's layer with the highest mean held-out r over the "
             "network's voxels",
    "n_voxels": "in-mask voxels of the network",
    "n_ans": "ANs of the layer",
    "n_ans_with_bn": "ANs of the layer with at least one BN in the network in the association "
                     "of a fold's training runs, mean over the leave-one-run-out folds",
    "step": "share of the layer's ANs removed at this step",
    "n_removed": "ANs removed: ceil(step x n_ans)",
    "mean_r_targeted": "mean held-out r over the network's voxels of the ridge model refitted "
                       "without the n_removed ANs with the most BNs in the network (each "
                       "fold's own ranking, from its training runs)",
    "mean_r_random": "the same without n_removed ANs drawn at random (seeded; control)",
}


def unit_networks(mask, unit, config):
    """(network masks over the in-mask voxels or None, sidecar fields naming the atlas and both
    spaces). Logs a warning when the atlas does not fit the data's space."""
    space = unit.space
    surface = is_grayordinates(mask)
    masks, atlases, problem = data_networks(config.networks.atlas, mask, space)
    fields = space_description(atlases, space)
    if problem:
        LOGGER.warning("%s: %s", unit.sources[0] if unit.sources else "", problem)
        return None, dict(fields, Networks=problem)
    return masks, dict(fields, Networks=(
        f"atlases ({fields['Atlas']}) in {fields['AtlasSpace']}, data in {fields['DataSpace']}; "
        + ("matched to the grayordinates by structure and vertex / voxel" if surface else
           "resampled to the data grid (nearest neighbour)")
        + f"; {enrichment_description(config, surface)}"))


def enrichment_description(config, surface: bool = False) -> str:
    """How the networks table's p, q and drives are computed (for the sidecars)."""
    net = config.networks
    if net.n_surrogates <= 0:
        how = ("enrichment p per AN and network: hypergeometric (assumes independent voxels; "
               "BN maps are spatially smooth, so this p is anti-conservative)")
    else:
        refine = (f"; pairs at the floor p 1/{net.n_surrogates + 1} that BH does not reject "
                  f"get more surrogates, up to {net.max_surrogates}"
                  if net.max_surrogates > net.n_surrogates else "")
        how = (f"enrichment p per AN and network from a {SPIN_NOTE if surface else NULL_NOTE} "
               f"({net.n_surrogates} "
               f"surrogates, seed {net.seed}; a pair stops once {STOP_AT} null densities "
               f"reached its own, p = {STOP_AT} / surrogates used{refine}); p_hypergeom: the "
               f"hypergeometric p, which assumes independent voxels (not used for drives)")
    return (f"{how}; BH across all ANs x networks of a layer, drives at q <= "
            f"{config.stats.fdr_q}")


def layer_count(model: str, stream: str, layers) -> tuple:
    """(layers of the model's stream, where that number comes from): the model registry, else
    the highest recorded layer index + 1."""
    # local import: loads torch; only for results without stored layer counts
    from bids_vlm.models import REGISTRY

    entry = REGISTRY.get(model)
    if entry is not None and stream in entry.streams:
        return int(entry.streams[stream][0]), "the model's layer count"
    return int(max(layers)) + 1, "the highest recorded layer + 1 (model not in the registry)"


def write_hierarchy(folder, ents, model, bests: dict, masks, fields, side) -> list:
    """``_hierarchy.tsv``: per stream and network, the mean preferred depth.

    bests: {stream: ((V,) preferred layer, n_layers)}."""
    frames = []
    for stream, (best, n_layers) in bests.items():
        frame = preferred_depth(best, n_layers, masks)
        frame.insert(0, "stream", stream)
        frame.insert(2, "n_layers", n_layers)
        frames.append(frame)
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "hierarchy", ".tsv")
    sidecar = {c: {"Description": d} for c, d in HIERARCHY_COLUMNS.items()}
    sidecar.update(side)
    sidecar.update(fields)
    sidecar["Description"] = ("hierarchy: per network, the mean relative depth of the voxels' "
                              "preferred layers (the highest held-out encoding r, where "
                              "significant: see "
                              "PreferredLayerTest)")
    return [write_tsv(path, pd.concat(frames, ignore_index=True)),
            write_json(path.with_suffix(".json"), sidecar)]


def write_lesion(lesion_file, folder, ents, config, side) -> list:
    """``_lesion.tsv`` of one model from :func:`bids_vlm.analysis.layers.compute_lesion`'s JSON
    (nothing when the lesion could not run: atlas space, encoding skipped or no steps)."""
    data = json.loads(Path(lesion_file).read_text())
    if data["skipped"]:
        return []
    model = output_model_name(data["model"], config)
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "lesion", ".tsv")
    sidecar = {c: {"Description": d} for c, d in LESION_COLUMNS.items()}
    sidecar.update(side)
    sidecar.update(data["fields"])
    sidecar.update({"Model": model, "Description": (
        "virtual lesion: held-out encoding accuracy of each network (driven by an AN of the "
        "stream) as the ANs with the most BNs in it are removed from its best layer's ridge "
        "model (leave-one-run-out, refitted at each step; each fold ranks the ANs by an "
        "association of its training runs over the network's voxels, so the held-out run "
        "does not choose what is removed)"),
        "LesionSteps": list(config.networks.lesion_steps)})
    if data["note"]:
        sidecar["Note"] = data["note"]
    table = pd.DataFrame(data["rows"], columns=COLUMNS)
    return [write_tsv(path, table), write_json(path.with_suffix(".json"), sidecar)]
