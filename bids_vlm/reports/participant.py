"""Stage 9: a participant's HTML report, ``<out>/sub-<label>.html`` with its figures in
``<out>/sub-<label>/figures/``."""
from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bids_vlm import __version__  # noqa: E402
from bids_vlm.names import entity, label, without_entity  # noqa: E402
from bids_vlm.reports.architecture import architecture_sections, overlap_tables  # noqa: E402
from bids_vlm.reports.html import figure, write_html  # noqa: E402
from bids_vlm.reports.inputs import skipped_units, timeline_table  # noqa: E402
from bids_vlm.reports.maps import (  # noqa: E402
    ENCODING_R_SHOWN,
    background as _background,
    brain_figure as _brain_figure,
    count_maps as _count_maps,
    map_sidecar as _map_sidecar,
    maps as _maps,
    save_figure as _save,
)
from bids_vlm.reports.sections import (  # noqa: E402
    FDR_SCOPES,
    layer_profile,
    methods_section,
    network_figure,
    polarity_and_redundancy,
    random_banner,
)


def participant_report(output_dir, subject: str, config, skipped=None) -> Path:
    """Write ``sub-<subject>.html`` and its figures; returns the HTML path. skipped: {analysis
    unit: why it was left out}."""
    out = Path(output_dir)
    sub_dir = out / f"sub-{subject}"
    figdir = sub_dir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    sections, sidecar = [], {}
    for table_path in sorted(sub_dir.rglob("*_neurons.tsv")):
        sidecar = json.loads(table_path.with_suffix(".json").read_text())
        sections.append(_unit_section(table_path, sidecar, figdir, out))
    sections += architecture_sections(overlap_tables(sub_dir, recursive=True), figdir, out)
    if not sections:
        sections.append("<p>No results were found for this participant.</p>")
    title = f"bids_vlm report: sub-{subject}"
    body = (random_banner(config.model.models) + _summary(subject, config) +
            skipped_units(skipped) + "".join(sections) + methods_section(config, sidecar))
    return write_html(out / f"sub-{subject}.html", title, body)


def _summary(subject, config):
    items = {"Participant": f"sub-{subject}", "Models": ", ".join(config.model.models),
             "HRF model": config.stats.hrf_model,
             f"FDR level ({FDR_SCOPES[config.stats.fdr_scope]})": config.stats.fdr_q,
             "Stimulus rate (Hz)": config.stimuli.stim_rate, "bids_vlm version": __version__}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items.items())
    return f"<h2>Summary</h2><table class='summary'>{rows}</table>"


def _unit_section(table_path, sidecar, figdir, out):
    table = pd.read_csv(table_path, sep="\t")
    stem = table_path.name.replace("_neurons.tsv", "")
    model = sidecar.get("Model", "")
    space = entity(table_path.name, "space")
    parts = [f"<h2>{html.escape(stem)}</h2>",
             f"<p>Model <b>{html.escape(model)}</b>; space: {html.escape(space or 'native')}; "
             f"{len(table)} ANs, {int(((table.n_bn_pos + table.n_bn_neg) > 0).sum())} with at "
             "least one BN.</p>",
             f"<p class='note'>{html.escape(sidecar.get('BOLDInput', ''))}</p>",
             timeline_table(sidecar.get("StimulusTimeline", {}))]
    profile = figdir / f"{stem}_layerprofile.png"
    layer_profile(table, profile, model)
    parts.append(figure(profile, out, "BN+ and BN- counts per layer, summed over ANs."))
    maps = _count_maps(table_path.parent, without_entity(stem, "desc"), model)
    background = _background(sidecar.get("Sources", []), space)
    for stream, paths in maps.items():
        fig = figdir / f"{stem}_stream-{label(stream)}_bncount.png"
        _brain_figure(paths, fig, f"{model} {stream}: ANs per voxel (all layers)", background,
                      space)
        parts.append(figure(fig, out, f"Number of {stream}-stream ANs (all layers) that have "
                                       "each voxel as a BN."))
    layers = table_path.with_name(table_path.name.replace("_neurons.tsv", "_layers.tsv"))
    if layers.is_file():
        parts += polarity_and_redundancy(layers, stem, figdir, out, model)
    nets = table_path.with_name(table_path.name.replace("_neurons.tsv", "_networks.tsv"))
    parts.append("<h3>Networks</h3>")
    if nets.is_file():
        parts.append(network_figure(nets, stem, figdir, out, model))
    parts.append(f"<p class='note'>{html.escape(sidecar.get('Networks', ''))}</p>")
    enc_table = table_path.with_name(table_path.name.replace("_neurons.tsv", "_encoding.tsv"))
    if enc_table.is_file():
        parts += _encoding_section(enc_table, stem, figdir, out, background, space, model)
    return "".join(parts)


def _encoding_section(enc_table, stem, figdir, out, background, space, model):
    """Held-out encoding r per layer, and each stream's preferred-layer map."""
    table = pd.read_csv(enc_table, sep="\t")
    parts = ["<h3>Layer-wise encoding</h3>"]
    fig_path = figdir / f"{stem}_encodingprofile.png"
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for stream, rows in table.groupby("stream", sort=True):
        ax.plot(rows.layer, rows.p95_r, marker="o", label=f"{stream} (95th pct)")
        ax.plot(rows.layer, rows.median_r, marker=".", linestyle="--", label=f"{stream} (median)")
    ax.set(xlabel="layer", ylabel="held-out r", title=f"{model}: ridge encoding per layer")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, fig_path)
    parts.append(figure(fig_path, out, "Held-out Pearson r of each layer's ridge model "
                                        "(leave-one-run-out), 95th percentile and median over "
                                        "voxels."))
    prefix = without_entity(stem, "desc")
    for path in _maps(enc_table.parent, f"{prefix}_desc-*_stat-preferredlayer_statmap"):
        side = _map_sidecar(path)
        if side.get("Model") != model:
            continue
        fig = figdir / f"{stem}_stream-{label(side['Stream'])}_preferredlayer.png"
        _brain_figure([path], fig, f"{model} {side['Stream']}: preferred layer", background,
                      space, threshold=0.5, cmap="viridis", reduce="first")
        parts.append(figure(fig, out, f"Layer of the {side['Stream']} stream whose encoding "
                                       "model predicts each voxel best (held-out r)."))
    for stream, paths in _count_maps(enc_table.parent, prefix, model, "encodingr").items():
        fig = figdir / f"{stem}_stream-{label(stream)}_encodingr.png"
        _brain_figure(paths, fig, f"{model} {stream}: best held-out r over layers", background,
                      space, threshold=ENCODING_R_SHOWN, cmap="hot", reduce="max")
        parts.append(figure(fig, out, f"Highest held-out r over the {stream} stream's layers "
                                       f"at each voxel (shown from r = {ENCODING_R_SHOWN:g})."))
    return parts
