"""Derivatives of the network analyses of one unit: which atlas fits the data, the hierarchy
table (mean preferred depth per network) and the virtual lesion table."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import h5py

from bids_vlm.analysis.atlases import space_description
from bids_vlm.analysis.networks import NULL_NOTE, STOP_AT, data_networks, enrichment
from bids_vlm.analysis.spin import NOTE as SPIN_NOTE
from bids_vlm.derivatives.io import write_json, write_tsv
from bids_vlm.names import bids_name, desc_label
from bids_vlm import brainmask
from bids_vlm.analysis.hierarchy import preferred_depth
from bids_vlm.analysis.lesion import FoldAssociation, network_lesions, COLUMNS
from bids_vlm.brainmask import is_grayordinates
from bids_vlm.derivatives.participant.common import output_model_name
from bids_vlm.design.cleaning import load_cleaned, noise_path
from bids_vlm.models.base import resolve_device
from bids_vlm.stats.bnstore import layers, read_layer

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


ENRICHMENT_FIELDS = ("n_pos", "n_neg", "frac", "p_hypergeom", "p", "n_null", "q", "drives")


def write_enrichment(association_file, mask_file, unit, config, path) -> str:
    """The network enrichment of every layer of one model's association (its spatial null is
    the costly part), computed once for the lesion and the tables -> ``path`` (HDF5): attribute
    ``networks`` (JSON list), per layer ``<stream>/<layer>/<field>`` (N_layer, M) arrays of
    :func:`bids_vlm.analysis.networks.enrichment`'s fields (:data:`ENRICHMENT_FIELDS`), or
    attribute ``skipped`` (why: no atlas fits the data)."""
    masks, _, problem = data_networks(config.networks.atlas, brainmask.load(mask_file),
                                      unit.space)
    with h5py.File(association_file, "r") as assoc, h5py.File(path, "w") as out:
        if problem:
            out.attrs["skipped"] = problem
            return str(path)
        out.attrs["networks"] = json.dumps(list(masks))
        for stream, layer, group, _ in layers(assoc):  # one layer's BNs at a time
            bns = read_layer(group)
            an, vox, sign = bns.entries()
            store_enrichment(out, f"{stream}/{layer}",
                             network_enrichment(an, vox, sign, bns.n_ans, masks, config, None))
    return str(path)


def store_enrichment(h5, key: str, result: dict) -> None:
    """One layer's :func:`network_enrichment` result under ``key`` of an open
    :func:`write_enrichment` file (networks in the order of its ``networks`` attribute)."""
    names = json.loads(h5.attrs["networks"])
    for field in ENRICHMENT_FIELDS:
        h5[f"{key}/{field}"] = np.stack([result[n][field] for n in names], axis=1)


def read_enrichment(h5, stream: str, layer: str) -> dict:
    """{network: {field: (N,)}} of one layer from an open :func:`write_enrichment` file."""
    names = json.loads(h5.attrs["networks"])
    arrays = {f: h5[f"{stream}/{layer}/{f}"][()] for f in ENRICHMENT_FIELDS}
    return {name: {f: arrays[f][:, m] for f in ENRICHMENT_FIELDS}
            for m, name in enumerate(names)}


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


def network_enrichment(an_index, voxel_index, r, n_an: int, masks, config, groups) -> dict:
    """:func:`bids_vlm.analysis.networks.enrichment` with the configuration's FDR level and
    spatial null; r: (E,) r or only its sign; groups: (N,) the BH family (layer) of each AN,
    None: one family (the ANs of one layer)."""
    net = config.networks
    return enrichment(np.asarray(an_index, np.int64), np.asarray(voxel_index, np.int64), r,
                      n_an, masks, config.stats.fdr_q, groups=groups,
                      n_surrogates=net.n_surrogates, max_surrogates=net.max_surrogates,
                      seed=net.seed)


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


def compute_lesion(regressors_file, cleaned_files, association_file, encoding_file, mask_file,
                   unit, config, enrichment_file, device="auto") -> dict:
    """The virtual lesion of one model: {"model", "rows" (records of the lesion table),
    "skipped" (why it did not run, or ""), "note", "fields" (atlas and spaces)};
    enrichment_file: :func:`write_enrichment`'s of the association (which networks are
    driven); device: where its refits run ("auto", "cpu", "cuda")."""
    masks, atlases, problem = data_networks(config.networks.atlas, brainmask.load(mask_file),
                                            unit.space)
    fields = space_description(atlases, unit.space)
    with h5py.File(association_file, "r") as assoc, h5py.File(encoding_file, "r") as enc, \
            h5py.File(regressors_file, "r") as regs:
        out = {"model": str(assoc.attrs["model"]), "rows": [], "fields": fields, "note": "",
               "skipped": ""}
        if problem or "skipped" in enc.attrs or not config.networks.lesion_steps:
            out["skipped"] = problem or str(enc.attrs.get("skipped", "no lesion steps"))
            return out
        names = {(s, int(k)): f"{s}/{k}" for s in assoc for k in assoc[s]}
        with h5py.File(enrichment_file, "r") as enriched:
            driven = _driven(enriched, masks)
        scores = {key: enc[f"{n}/r"][()] for key, n in names.items()}
        features = {key: regs[f"delayed/{n}"] if f"delayed/{n}" in regs else regs[n]
                    for key, n in names.items()}
        voxels = load_cleaned(cleaned_files)
        device = resolve_device(device)
        stats = config.stats
        settings = FoldAssociation(stats.bn_definition, stats.nuisance_pcs, stats.autocorr,
                                   stats.n_lags or None, stats.fdr_q, stats.fdr_scope,
                                   str(device))
        noise = {"run_removed": regs.attrs["run_removed"]}
        if stats.autocorr == "exact":
            noise.update(run_noise=[np.load(noise_path(f)) for f in cleaned_files],
                         run_traces=regs.attrs["run_lag_traces"])
        presence = {s: regs[f"nuisance/presence/{s}"][()] for s in {k[0] for k in names}
                    if f"nuisance/presence/{s}" in regs and stats.bn_definition == "unique"}
        table = network_lesions(features, {key: regs[n] for key, n in names.items()}, scores,
                                voxels, [int(n) for n in regs.attrs["run_lengths"]], masks,
                                config.networks.lesion_steps, driven, seed=config.model.seed,
                                settings=settings, presence=presence, noise=noise,
                                alphas=np.asarray(config.encoding.alphas),
                                backend="torch_cuda" if device.type == "cuda" else "torch",
                                max_inner_folds=config.encoding.max_inner_folds)
    out["rows"] = json.loads(table.to_json(orient="records"))
    if table.empty:
        out["note"] = "no network is driven by an AN of any stream"
    return out


def _driven(enriched, masks) -> dict:
    """{network: streams with at least one AN that drives it} (enrichment as in the networks
    table: every AN of the model, BH across the ANs x networks of each layer), from an open
    :func:`write_enrichment` file."""
    out = {name: set() for name in masks}
    for stream in enriched:
        for layer in enriched[stream]:
            drives = enriched[f"{stream}/{layer}/drives"][()]  # (N, M)
            for m, name in enumerate(json.loads(enriched.attrs["networks"])):
                if drives[:, m].any():
                    out[name].add(stream)
    return out


def write_lesion(lesion_file, folder, ents, config, side) -> list:
    """``_lesion.tsv`` of one model from :func:`compute_lesion`'s JSON (nothing when the
    lesion could not run: atlas space, encoding skipped or no steps)."""
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
