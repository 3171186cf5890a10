"""Derivatives of the per-layer summaries: redundancy maps, the layer table (polarity, network
drive, modality specificity) with the polarity statistics in its sidecar, and Jaccard overlaps."""
from __future__ import annotations

import numpy as np

from bids_vlm.analysis.summaries import layer_jaccard, layer_table, polarity_curves
from bids_vlm.derivatives.io import write_json, write_map, write_tsv
from bids_vlm.names import bids_name, desc_label

LAYER_COLUMNS = {
    "n_ans": "ANs of the layer", "n_ans_with_bn": "ANs with at least one BN",
    "mean_bn_pos": "mean BN+ count per AN (the polarity curve P(layer))",
    "mean_bn_neg": "mean BN- count per AN (the polarity curve N(layer))",
    "mean_inter_an_abs_r": "mean |r| between the layer's AN regressors (each AN with a seeded "
                           "sample of up to 512 others): how redundant the layer's ANs are",
    "mean_removed_share": "mean share of an AN regressor's variance removed by --bn-definition "
                          "unique (stimulus presence and the layer's top principal components)",
    "mean_msi": "mean modality specificity index (v - l) / (v + l), v and l the shares of an "
                "AN's BNs in the visual and language networks (ANs with BNs in either)",
    "image_text_overlap": "Jaccard overlap of the voxels that are BNs of any image-stream AN "
                          "and of any text-stream AN at this layer index",
}
JACCARD_MAX_ANS = 200
POLARITY_SURROGATES = 9999
POLARITY_TEXT = (
    "r: Pearson r across layers between P(layer) and N(layer), descriptive only (negative: "
    "mirrored curves; smooth layer curves correlate by chance, so r itself is not tested). "
    "r_prewhitened: Pearson r between the two curves after each is filtered by its own fitted "
    "AR(1) (x[t] - phi * x[t-1], phi the lag-1 least-squares slope clipped to [0, 1]; 1 = first "
    "differences), i.e. whether P and N move together from layer to layer beyond their own "
    "autocorrelation. p: its two-sided p against NumberOfSurrogates random re-orderings of N's "
    "residuals (seeded), p = (1 + number of surrogates with |r| >= |r_prewhitened|) / (1 + "
    "NumberOfSurrogates), never 0; calibrated by simulation on unrelated random-walk and AR(1) "
    "curves over 12 layers. r_prewhitened and p are null with fewer than 3 residuals or when "
    "nothing varies after prewhitening (e.g. straight lines: a shared smooth trend is not testable)")


def stream_overlap(table, maps: dict, layers):
    """(rows of ``layers``,) Jaccard overlap between the voxels that are BNs of any image-stream
    AN of a layer and those of any text-stream AN of the same layer index (n/a otherwise).

    maps: {(stream, layer): (V,) bool} the union BN map of each analysed layer (a layer
    without one counts as empty)."""
    n_vox = len(next(iter(maps.values()))) if maps else 0

    def bn_map(stream, layer):
        return maps.get((stream, int(layer)), np.zeros(n_vox, bool))

    out = []
    for layer in layers["layer"]:
        present = set(table.stream[table.layer == layer])
        if not {"image", "text"} <= present:
            out.append(np.nan)
            continue
        a, b = bn_map("image", layer), bn_map("text", layer)
        union = (a | b).sum()
        out.append((a & b).sum() / union if union else 0.0)
    return out


def driving_columns(columns, level: str = "") -> dict:
    """Sidecar entries {column: {"Description"}} of the ``share_driving_<network>`` columns
    among ``columns`` (a layer table's); ``level`` ends each one, e.g. " at group level"."""
    prefix = "share_driving_"
    return {c: {"Description": f"share of the layer's ANs that drive network "
                               f"{c[len(prefix):]}{level}"}
            for c in columns if c.startswith(prefix)}


def write_redundancy_maps(folder, ents, model, counts: dict, mask, side) -> list:
    """Per stream: how many ANs of all layers have each voxel as a BN."""
    written = []
    for stream, count in counts.items():
        path = folder / bids_name(dict(ents, desc=desc_label(model, stream), stat="bncount"),
                                  "statmap", ".nii.gz")
        written.append(write_map(path, count, mask, dict(
            side, Model=model, Stream=stream, Units="count",
            Description=f"functional redundancy: number of ANs of all {stream} layers of "
                        f"{model} that have the voxel as a BN")))
    return written


def write_layer_summaries(folder, ents, model, table, maps, bn_rows, nets, counts, side,
                          seed) -> list:
    """``_layers.tsv`` (+ polarity statistics) and ``_jaccard.tsv`` of one model.

    maps: {(stream, layer): (V,) bool} union BN maps; bn_rows: a function of (k,) AN rows of
    ``table`` giving (an_index (e,), voxel_index (e,)) of their BNs (the Jaccard overlaps read
    only the sampled ANs' BNs, a stream at a time); counts: {stream: (V,) ANs of all layers per
    voxel}; its length gives the voxel count.
    """
    n_vox = len(next(iter(counts.values()))) if counts else 0
    layers = layer_table(table, nets)
    layers["image_text_overlap"] = stream_overlap(table, maps, layers)
    polarity = polarity_curves(table, n_surrogates=POLARITY_SURROGATES, seed=seed)
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "layers", ".tsv")
    sidecar = {c: {"Description": d} for c, d in LAYER_COLUMNS.items()}
    sidecar.update(driving_columns(layers.columns))
    sidecar["Polarity"] = {
        "Description": POLARITY_TEXT, "NumberOfSurrogates": POLARITY_SURROGATES,
        **{stream: {k: None if np.isnan(res[k]) else res[k] for k in ("r", "r_prewhitened", "p")}
           for stream, res in polarity.items()}}
    sidecar.update(side)
    jac = layer_jaccard(table, bn_rows, n_vox, JACCARD_MAX_ANS, seed)
    jac_path = folder / bids_name(dict(ents, desc=desc_label(model)), "jaccard", ".tsv")
    jac_side = {"mean_jaccard": {"Description": "mean Jaccard overlap of the BN maps of pairs "
                                                "of ANs (distinct ANs within a layer)"},
                "n_a": {"Description": f"ANs with BNs of layer_a used (at most "
                                       f"{JACCARD_MAX_ANS}, drawn at random with the seed)"},
                "n_b": {"Description": "same for layer_b"}}
    return [write_tsv(path, layers), write_json(path.with_suffix(".json"), sidecar),
            write_tsv(jac_path, jac), write_json(jac_path.with_suffix(".json"),
                                                 dict(jac_side, Model=model))]
