"""Stage 9: the group level's HTML report, ``<out>/group.html`` with its figures in
``<out>/group/figures/``."""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from bids_vlm.names import entity, label, without_entity
from bids_vlm.reports.architecture import architecture_sections, overlap_tables
from bids_vlm.reports.hierarchy import hierarchy_sections
from bids_vlm.reports.html import figure, write_html
from bids_vlm.reports.maps import (
    ENCODING_R_SHOWN,
    brain_figure as _brain_figure,
    count_maps as _count_maps,
    map_sidecar as _map_sidecar,
)
from bids_vlm.reports.sections import (
    layer_profile,
    methods_section,
    network_figure,
    num,
    polarity_and_redundancy,
    random_banner,
)

def group_report(output_dir, config) -> Path:
    """Write ``group.html`` and ``group/figures/`` from the group derivatives."""
    out = Path(output_dir)
    figdir = out / "group" / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    sections, map_side = [], {}
    for table_path in sorted((out / "group").glob("*_neurons.tsv")):
        table = pd.read_csv(table_path, sep="\t")
        side = json.loads(table_path.with_suffix(".json").read_text())
        stem = table_path.name.replace("_neurons.tsv", "")
        profile = figdir / f"{stem}_layerprofile.png"
        layer_profile(table.rename(columns={"mean_bn_pos": "n_bn_pos",
                                             "mean_bn_neg": "n_bn_neg"}), profile,
                       f"group {side.get('Model', '')}")
        parts = [f"<h2>{html.escape(stem)}</h2>",
                 f"<p>{len(side.get('Participants', []))} participant(s): "
                 f"{html.escape(', '.join(side.get('Participants', [])))}.</p>",
                 figure(profile, out, "Mean BN+ and BN- counts per layer over participants.")]
        maps = _count_maps(out / "group", without_entity(stem, "desc"), side.get("Model"),
                           "meanbncount")
        for stream, paths in maps.items():
            map_side = _map_sidecar(paths[0])
            fig = figdir / f"{stem}_stream-{label(stream)}_meanbncount.png"
            _brain_figure(paths, fig, f"group {stream}: mean ANs per voxel (all layers)", None,
                          entity(stem, "space"))
            parts.append(figure(fig, out, f"Mean number of {stream}-stream ANs per voxel."))
        for stream, paths in _count_maps(out / "group", without_entity(stem, "desc"),
                                         side.get("Model"), "meanencodingr").items():
            fig = figdir / f"{stem}_stream-{label(stream)}_meanencodingr.png"
            _brain_figure(paths, fig, f"group {stream}: best mean held-out r over layers", None,
                          entity(stem, "space"), threshold=ENCODING_R_SHOWN, reduce="max")
            parts.append(figure(fig, out, f"Highest mean held-out r (over participants) among "
                                           f"the {stream} stream's layers at each voxel."))
        parts += _group_summaries(table_path, stem, figdir, out, side.get("Model", ""))
        sections.append("".join(parts))
    sections += architecture_sections(overlap_tables(out / "group", recursive=False), figdir,
                                      out)
    body = "".join(sections) or "<p>No group results.</p>"
    models = [json.loads(p.with_suffix(".json").read_text()).get("Model", "").removesuffix("-qk")
              for p in sorted((out / "group").glob("*_neurons.tsv"))]
    return write_html(out / "group.html", "bids_vlm report: group",
                       random_banner(models) + body + methods_section(config, map_side))


def _group_summaries(table_path, stem, figdir, out, model):
    """Group polarity (with each participant's mirrored r), redundancy, network, hierarchy and
    lesion sections."""
    parts = []
    layers = table_path.with_name(table_path.name.replace("_neurons.tsv", "_layers.tsv"))
    if layers.is_file():
        parts += polarity_and_redundancy(layers, stem, figdir, out, model)
        polarity = json.loads(layers.with_suffix(".json").read_text()).get("Polarity", {})
        per_sub = "; ".join(
            f"{stream}: " + ", ".join(f"sub-{sub} r={num(r):.2f}"
                                      for sub, r in res.get("ParticipantR", {}).items())
            for stream, res in polarity.items() if isinstance(res, dict))
        if per_sub:
            parts.append(f"<p>Mirrored-trend r of each participant: {html.escape(per_sub)}.</p>")
    nets = table_path.with_name(table_path.name.replace("_neurons.tsv", "_networks.tsv"))
    if nets.is_file():
        parts += ["<h3>Networks</h3>", network_figure(
            nets, stem, figdir, out, model, "Share of each layer's ANs that drive a network at "
            "group level (participants' enrichment p combined with Fisher's method, BH across "
            "ANs).")]
        drivers = nets.with_name(nets.name.replace("_networks.tsv", "_drivers.tsv"))
        if drivers.is_file():
            parts.append("<p>ANs driving each network: at group level, in a participant (mean), "
                         "in any participant; mean share of BNs in the network (ANs with BNs, "
                         "group-level drivers).</p>")
            parts.append("<div class='wide'>" + pd.read_csv(drivers, sep="\t").to_html(
                index=False, float_format=lambda x: f"{x:.3g}", na_rep="n/a",
                classes="drivers", border=0) + "</div>")
    return parts + hierarchy_sections(table_path, stem, figdir, out, model)
