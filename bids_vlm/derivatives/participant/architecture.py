"""Derivatives of the architecture comparison (docs/METHOD.md 8) of one analysis unit run with
two or more models: the modality specificity index per model, stream and layer
(``_msi.tsv``, in MNI space only) and the overlap of paired streams' BN maps per relative depth
(``_streamoverlap.tsv``), named ``desc-<model>Vs<model>...``.

They are computed from the per-model tables the unit has just written (``_neurons.tsv`` with
its LayersPerStream, ``_networks.tsv`` with the per-AN MSI, ``_association.h5``), so that the
group level (:mod:`bids_vlm.derivatives.group.architecture`) can apply the same functions to its tables.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pandas as pd

from bids_vlm.analysis.architecture import (
    MSI_THRESHOLD,
    msi_summary,
    stream_overlap,
    union_bn_maps,
)
from bids_vlm.stats.bnstore import layers, read_layer
from bids_vlm.derivatives.io import read_tsv, write_json, write_tsv
from bids_vlm.names import bids_name, desc_label

MSI_COLUMNS = {
    "model": "model (as in the per-model tables)",
    "stream": "image, text, cross-image or cross-text",
    "layer": "layer index (0 = first layer)",
    "n_layers": "layers of the stream in the model",
    "relative_depth": "layer / (n_layers - 1): the layer's depth in its stream (0 = first "
                      "layer, 1 = last; n/a for a single-layer stream)",
    "n_ans": "ANs of the layer",
    "n_ans_with_bn": "ANs with at least one BN",
    "n_ans_with_msi": "ANs with at least one BN in the Visual or Language network (the ANs "
                      "with a modality specificity index)",
    "mean_msi": "mean modality specificity index (v - l) / (v + l) over those ANs, v and l the "
                "shares of an AN's BNs in the Visual and Language networks",
    "median_msi": "median of the index", "q1_msi": "first quartile of the index",
    "q3_msi": "third quartile of the index", "min_msi": "smallest index",
    "max_msi": "largest index",
    "share_visual": f"share of the ANs with an index whose index is > {MSI_THRESHOLD:g} "
                    "(visual specific)",
    "share_language": f"share of the ANs with an index whose index is < -{MSI_THRESHOLD:g} "
                      "(language specific)",
}
OVERLAP_COLUMNS = {
    "model": "model (as in the per-model tables)",
    "stream_a": "first stream of the pair (image, or cross-image)",
    "stream_b": "second stream of the pair (text, or cross-text)",
    "layer_a": "layer of stream_a", "layer_b": "layer of stream_b at the same relative depth",
    "relative_depth_a": "layer_a / (layers of stream_a - 1) (0 = first layer, 1 = last; n/a "
                        "for a single-layer stream)",
    "relative_depth_b": "layer_b / (layers of stream_b - 1) (the same for stream_b)",
    "relative_depth": "mean of relative_depth_a and relative_depth_b",
    "n_voxels": "in-mask voxels",
    "n_bn_a": "voxels that are a BN (either sign) of at least one AN of layer_a of stream_a",
    "n_bn_b": "the same for layer_b of stream_b",
    "n_bn_both": "voxels in both BN maps",
    "jaccard": "Jaccard overlap n_bn_both / (n_bn_a + n_bn_b - n_bn_both) of the two BN maps",
    "dice": "Dice overlap 2 n_bn_both / (n_bn_a + n_bn_b) of the two BN maps",
    "chance_jaccard": "Jaccard overlap expected for maps of these sizes placed independently "
                      "at random (expected intersection n_bn_a n_bn_b / n_voxels over the "
                      "expected union)",
}
OVERLAP_DESCRIPTION = (
    "overlap of the BN maps (voxels that are a BN of any AN of a layer) of a model's image and "
    "text streams, and of its cross-image and cross-text streams, at each relative depth; "
    "layers of streams with different layer counts are paired by nearest relative depth "
    "(within half a layer of the shallower stream)")
MSI_DESCRIPTION = (
    "distribution of the modality specificity index (v - l) / (v + l) of the ANs (v, l: shares "
    "of the AN's BNs in the Visual and Language networks; per AN in each model's _networks.tsv) "
    "per model, stream and layer")
KEPT = ("Sources", "BOLDInput", "AssociationMethod", "FDRLevel", "HRFModel", "Networks")


def architecture_desc(models) -> str:
    """desc label of a comparison, e.g. ``clipvitb16Vsmeterclip16roberta``."""
    return "Vs".join(desc_label(m) for m in models)


def model_files(written) -> list[dict]:
    """The per-model tables among the unit's ``written`` paths, in the order written:
    [{"model", "neurons", "networks" (None outside MNI space), "association"}]."""
    found = {}
    for path in map(Path, written):
        for suffix in ("neurons", "networks", "association"):
            ending = f"_{suffix}{'.h5' if suffix == 'association' else '.tsv'}"
            if path.name.endswith(ending):
                found.setdefault(path.name[:-len(ending)], {})[suffix] = path
    out = []
    for files in found.values():
        if "neurons" in files and "association" in files:
            side = json.loads(files["neurons"].with_suffix(".json").read_text())
            out.append({"model": side["Model"], "networks": files.get("networks"),
                        "sidecar": side, **files})
    return out


def union_maps(h5, table) -> dict:
    """{(stream, layer): (V,) bool} the union BN map of each layer of an ``_association.h5``,
    read a layer at a time (:func:`~bids_vlm.analysis.architecture.union_bn_maps` of the
    older flat files). table: the model's neuron table."""
    n_vox = len(h5["voxel_ijk"])
    if "an_index" in h5:
        return union_bn_maps(table["stream"], table["layer"], h5["an_index"][()],
                             h5["voxel_index"][()], n_vox)
    return {(stream, layer): read_layer(group).union(n_vox)
            for stream, layer, group, _ in layers(h5)}


def write_architecture_outputs(folder, ents, written) -> list:
    """``_msi.tsv`` (when every model has a network table with an index) and
    ``_streamoverlap.tsv`` of the unit's models (+ sidecars); nothing with fewer than two
    models."""
    models = model_files(written)
    if len(models) < 2:
        return []
    names = [m["model"] for m in models]
    first = models[0]["sidecar"]
    meta = {"Models": names, **{k: first[k] for k in KEPT if k in first},
            "LayersPerStream": {m["model"]: m["sidecar"]["LayersPerStream"] for m in models}}
    stem = dict(ents, desc=architecture_desc(names))
    overlaps, per_an = [], []
    for item in models:
        table = read_tsv(item["neurons"])
        layers = item["sidecar"]["LayersPerStream"]
        with h5py.File(item["association"], "r") as h5:
            maps = union_maps(h5, table)
        overlaps.append(stream_overlap(maps, layers, item["model"]))
        nets = read_tsv(item["networks"]) if item["networks"] is not None else None
        if nets is not None and "msi" in nets:
            per_an.append(pd.DataFrame({
                "model": item["model"], "stream": table["stream"], "layer": table["layer"],
                "msi": nets["msi"].to_numpy(float),
                "has_bn": (table["n_bn_pos"] + table["n_bn_neg"]).to_numpy() > 0}))
    path = folder / bids_name(stem, "streamoverlap", ".tsv")
    out = [write_tsv(path, pd.concat(overlaps, ignore_index=True)),
           write_json(path.with_suffix(".json"), dict(
               {c: {"Description": d} for c, d in OVERLAP_COLUMNS.items()},
               Description=OVERLAP_DESCRIPTION, **meta))]
    if len(per_an) == len(models):
        depth = {(m["model"], s): n for m in models
                 for s, n in m["sidecar"]["LayersPerStream"].items()}
        path = folder / bids_name(stem, "msi", ".tsv")
        out += [write_tsv(path, msi_summary(pd.concat(per_an, ignore_index=True), depth)),
                write_json(path.with_suffix(".json"), dict(
                    {c: {"Description": d} for c, d in MSI_COLUMNS.items()},
                    Description=MSI_DESCRIPTION, **meta))]
    return out
