"""Group level of the neuron-level summaries (docs/METHOD.md 9): networks, polarity and redundancy.

The participants' per-AN network tables (``_networks.tsv``), neuron tables and Jaccard tables
of one (task, acquisition, space, model) are combined, and the participant-level functions of
:mod:`bids_vlm.analysis.summaries` are applied to the combined tables:

- ``group_..._networks.tsv``: per AN, the mean over participants of its BN counts and share of
  BNs in each network, the participants' enrichment p combined with Fisher's method (each
  participant's session is an independent test) with BH across ANs, and the networks it drives at
  group level (combined q <= the participants' FDR level);
- ``group_..._drivers.tsv``: per network and stream, how many ANs drive it (at group level, in
  each participant on average, in any participant) and the mean share of BNs in it;
- ``group_..._layers.tsv``: the layer table of the group (P(layer), N(layer), share of ANs
  driving each network, modality specificity) with the mirrored-trend correlation of the group
  curves, per stream and per network, in its sidecar (and each participant's r);
- ``group_..._jaccard.tsv``: the participants' Jaccard overlaps within and across layers,
  averaged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bids_vlm.analysis.group import group_networks, group_polarity, network_drivers, networks_of
from bids_vlm.analysis.summaries import layer_table
from bids_vlm.derivatives.io import read_sidecar, read_tsv, write_json, write_tsv
from bids_vlm.names import unit_tables
from bids_vlm.derivatives.participant.summaries import driving_columns


















GROUP_LAYER_COLUMNS = {
    "n_ans": "ANs of the layer",
    "n_ans_with_bn": "ANs with at least one BN in at least one participant",
    "mean_bn_pos": "group P(layer): mean over the layer's ANs of their mean BN+ count over "
                   "participants",
    "mean_bn_neg": "group N(layer): mean over the layer's ANs of their mean BN- count over "
                   "participants",
    "mean_msi": "mean modality specificity index of the group network table (ANs with BNs in "
                "the visual or language network)",
}
DRIVER_COLUMNS = {
    "network": "network", "stream": "stream of the ANs", "n_ans": "ANs of the stream",
    "n_ans_driving": "ANs that drive the network at group level (see _networks.tsv)",
    "mean_n_ans_driving_per_participant": "mean over participants of the number of ANs that "
                                          "drive the network in the participant",
    "n_ans_driving_any_participant": "ANs that drive the network in at least one participant",
    "mean_frac": "mean over the ANs with at least one BN of their (participant-mean) share of "
                 "BNs in the network",
    "mean_frac_drivers": "the same over the ANs that drive the network at group level",
}


def combine_summaries(output_dir) -> list[Path]:
    """Write the group network, driver, layer and Jaccard tables (module doc) under
    ``<output_dir>/group/``; needs the group neuron tables (bids_vlm.derivatives.group.combine) written first."""
    group = Path(output_dir) / "group"
    networks, jaccards, layers = (unit_tables(output_dir, s) for s in ("networks", "jaccard",
                                                                  "layers"))
    written = []
    for (rest, desc), items in unit_tables(output_dir, "neurons").items():
        stem = f"group_{rest}_desc-{desc}"
        neurons = read_tsv(group / f"{stem}_neurons.tsv")
        first = read_sidecar(items[0][1], required=False)
        meta = {"Model": first.get("Model", ""), "Participants": sorted({s for s, _ in items})}
        nets = None
        if (rest, desc) in networks:
            tables = [(s, read_tsv(p)) for s, p in networks[(rest, desc)]]
            side = read_sidecar(networks[(rest, desc)][0][1], required=False)
            q = float(side.get("FDRLevel", 0.05))
            nets = group_networks(tables, q).set_index("an_id").loc[neurons.an_id].reset_index()
            written += _write_networks(group / f"{stem}_networks.tsv", nets, q, meta)
            has_bn = (neurons.n_participants_with_bn > 0).to_numpy()
            path = group / f"{stem}_drivers.tsv"
            written += [write_tsv(path, network_drivers(nets, tables, has_bn)),
                        write_json(path.with_suffix(".json"), dict(
                            {c: {"Description": d} for c, d in DRIVER_COLUMNS.items()},
                            **meta))]
        written += _write_layers(group / f"{stem}_layers.tsv", neurons, nets,
                                 layers.get((rest, desc), []), meta)
        if (rest, desc) in jaccards:
            jac = pd.concat([read_tsv(p) for _, p in jaccards[(rest, desc)]])
            jac = jac.groupby(["stream", "layer_a", "layer_b"], sort=True)[
                ["mean_jaccard", "n_a", "n_b"]].mean().reset_index()
            path = group / f"{stem}_jaccard.tsv"
            written += [write_tsv(path, jac), write_json(path.with_suffix(".json"), dict(
                mean_jaccard={"Description": "mean over participants of the mean Jaccard "
                                             "overlap of the BN maps of pairs of ANs of "
                                             "layer_a and layer_b (distinct ANs within a layer)"},
                n_a={"Description": "mean over participants of the ANs of layer_a used"},
                n_b={"Description": "same for layer_b"}, **meta))]
    return written


def _write_networks(path, nets, q, meta):
    side = {"drives": {"Description": f"networks the AN drives at group level (combined "
                                      f"enrichment q <= {q:g}; n/a: none)"},
            "msi": {"Description": "modality specificity index (v - l) / (v + l) of the "
                                   "participant-mean shares v, l of BNs in the Visual and "
                                   "Language networks"}}
    text = {"n_pos": "mean over participants of the AN's BN+ in network ",
            "n_neg": "mean over participants of the AN's BN- in network ",
            "frac": "mean over participants of the share of the AN's BNs in network ",
            "p": "Fisher's combination of the participants' enrichment p (spatial null, or "
                 "hypergeometric with --n-surrogates 0) "
                 "(sessions as separate tests) for network ",
            "q": "Benjamini-Hochberg q (across all ANs x networks of the AN's stream and layer, "
                 "as at the participant level) of the combined p for network ",
            "n_participants_driving": "participants in which the AN drives network "}
    for net in networks_of(nets):
        side.update({f"{k}_{net}": {"Description": t + net} for k, t in text.items()})
    return [write_tsv(path, nets), write_json(path.with_suffix(".json"), dict(side, **meta))]


def _write_layers(path, neurons, nets, participant_layers, meta):
    table = neurons.rename(columns={"mean_bn_pos": "n_bn_pos", "mean_bn_neg": "n_bn_neg"})
    layers = layer_table(table, nets)
    polarity = group_polarity(neurons, nets)
    for sub, p in participant_layers:
        for stream, res in read_sidecar(p, required=False).get("Polarity", {}).items():
            if isinstance(res, dict) and stream in polarity:
                polarity[stream].setdefault("ParticipantR", {})[sub] = res.get("r")
    side = {c: {"Description": d} for c, d in GROUP_LAYER_COLUMNS.items()}
    side.update(driving_columns(layers.columns, " at group level"))
    side["Polarity"] = {
        "Description": "Pearson r across layers between the group curves P(layer) and N(layer) "
                       "(negative: mirrored trends), descriptive; r_prewhitened and p test whether "
                       "they move together from layer to layer beyond each curve's own "
                       "autocorrelation (each prewhitened by its AR(1), surrogate p = (1 + "
                       "as extreme) / (1 + surrogates)), "
                       "per stream and per network (BN+ / BN- inside the network); "
                       "ParticipantR: each participant's r",
        **_no_nan(polarity)}
    return [write_tsv(path, layers), write_json(path.with_suffix(".json"), dict(side, **meta))]


def _no_nan(obj):
    """``obj`` with NaN floats (undefined correlations) as None (JSON null)."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return None if isinstance(obj, float) and np.isnan(obj) else obj
