"""Derivatives of the per-layer summaries: redundancy maps, the layer table (polarity, network
drive, modality specificity) with the polarity statistics in its sidecar, and Jaccard overlaps."""
from __future__ import annotations

from bids_vlm.analysis.summaries import layer_jaccard, layer_table, polarity_curves
from bids_vlm.derivatives.io import bids_name, desc_label, write_json, write_map, write_tsv

LAYER_COLUMNS = {
    "n_ans": "ANs of the layer", "n_ans_with_bn": "ANs with at least one BN",
    "mean_bn_pos": "mean BN+ count per AN (the polarity curve P(layer))",
    "mean_bn_neg": "mean BN- count per AN (the polarity curve N(layer))",
    "mean_msi": "mean modality specificity index (v - l) / (v + l), v and l the shares of an "
                "AN's BNs in the visual and language networks (ANs with BNs in either)",
}
JACCARD_MAX_ANS = 200


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


def write_layer_summaries(folder, ents, model, table, entries, nets, n_vox, side, seed) -> list:
    """``_layers.tsv`` (+ polarity statistics) and ``_jaccard.tsv`` of one model."""
    layers = layer_table(table, nets)
    polarity = polarity_curves(table, seed=seed)
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "layers", ".tsv")
    sidecar = {c: {"Description": d} for c, d in LAYER_COLUMNS.items()}
    for col in layers.columns:
        if col.startswith("share_driving_"):
            sidecar[col] = {"Description": f"share of the layer's ANs that drive network "
                                           f"{col[len('share_driving_'):]}"}
    sidecar["Polarity"] = {
        "Description": "Pearson r across layers between P(layer) and N(layer) (negative: "
                       "mirrored trends) and its permutation p over layer orders",
        **{stream: {"r": res["r"], "p": res["p"]} for stream, res in polarity.items()}}
    sidecar.update(side)
    jac = layer_jaccard(table, entries["an_index"].astype(int),
                        entries["voxel_index"].astype(int), n_vox, JACCARD_MAX_ANS, seed)
    jac_path = folder / bids_name(dict(ents, desc=desc_label(model)), "jaccard", ".tsv")
    jac_side = {"mean_jaccard": {"Description": "mean Jaccard overlap of the BN maps of pairs "
                                                "of ANs (distinct ANs within a layer)"},
                "n_a": {"Description": f"ANs with BNs of layer_a used (at most "
                                       f"{JACCARD_MAX_ANS}, drawn at random with the seed)"},
                "n_b": {"Description": "same for layer_b"}}
    return [write_tsv(path, layers), write_json(path.with_suffix(".json"), sidecar),
            write_tsv(jac_path, jac), write_json(jac_path.with_suffix(".json"),
                                                 dict(jac_side, Model=model))]
