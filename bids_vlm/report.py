"""Stage 9: the HTML reports (participant and group), with figures saved next to them.

A participant report lives at ``<out>/sub-<label>.html`` with its figures in
``<out>/sub-<label>/figures/``; the group report at ``<out>/group.html`` with
``<out>/group/figures/``.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bids_vlm import __version__  # noqa: E402
from bids_vlm.derivatives import atomic_path  # noqa: E402
from bids_vlm.derivatives.io import label  # noqa: E402
from bids_vlm.models import random_weights_warning  # noqa: E402
from bids_vlm.report_architecture import architecture_sections, overlap_tables  # noqa: E402
from bids_vlm.report_hierarchy import hierarchy_sections  # noqa: E402
from bids_vlm.report_inputs import skipped_units, timeline_table  # noqa: E402
from bids_vlm.report_maps import (  # noqa: E402
    ENCODING_R_SHOWN,
    background as _background,
    brain_figure as _brain_figure,
    count_maps as _count_maps,
    map_sidecar as _map_sidecar,
    maps as _maps,
    save_figure as _save,
)

CITATIONS = [
    "Ren et al. (2025). Uncovering brain-like hierarchical patterns in vision-language models "
    "through fMRI-based neural encoding. arXiv:2510.16870.",
    "Radford et al. (2021). Learning transferable visual models from natural language "
    "supervision (CLIP). ICML. Cherti et al. (2023), open_clip.",
    "Abraham et al. (2014). Machine learning for neuroimaging with scikit-learn (nilearn). "
    "Front. Neuroinform. 8:14.",
    "Gorgolewski et al. (2011). Nipype. Front. Neuroinform. 5:13. Yarkoni et al. (2019). "
    "PyBIDS. JOSS 4(40):1294.",
    "Benjamini & Hochberg (1995). Controlling the false discovery rate. JRSS B 57:289-300.",
    "Benjamini & Bogomolov (2014). Selective inference on multiple families of hypotheses. "
    "JRSS B 76:297-318.",
]


AN_KINDS = {"ffn": "the post-nonlinearity units of every feed-forward block",
            "attn": "the query x key products of every attention head dimension"}
FDR_SCOPES = {"selective": "ANs selected across the layer, then voxels within each",
              "an": "per AN, over voxels", "all": "over all AN x voxel pairs of a layer"}


def methods_text(config, sidecar: dict) -> str:
    """Methods boilerplate from the resolved configuration and a map sidecar."""
    return (
        f"Results were generated with bids_vlm {__version__}. Events were sampled at "
        f"{config.stimuli.stim_rate:g} Hz into a stimulus timeline; each stimulus was passed "
        f"through {', '.join(config.model.models)} and {AN_KINDS[config.model.an_kind]} "
        f"(artificial neurons, ANs) were {config.model.pooling}-pooled over "
        f"tokens. AN activations were convolved with the {config.stats.hrf_model.upper()} "
        "haemodynamic response (nilearn compute_regressor), sampled at the BOLD frame times and "
        f"z-scored within runs. BOLD input: {sidecar.get('BOLDInput', 'n/a')}; it was detrended, "
        f"high-pass filtered at {config.bold.high_pass:.4g} Hz, cleaned of confounds when "
        "available and z-scored within runs (nilearn). Association: "
        f"{sidecar.get('AssociationMethod', '')}, q = {config.stats.fdr_q:g}. A voxel "
        "significantly associated with an AN is one of its biological neurons (BN+ for positive, "
        "BN- for negative r).")


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
    sections += architecture_sections(overlap_tables(sub_dir, recursive=True), figdir, out,
                                      _table_section)
    if not sections:
        sections.append("<p>No results were found for this participant.</p>")
    title = f"bids_vlm report: sub-{subject}"
    body = (_random_banner(config.model.models) + _summary(subject, config) +
            skipped_units(skipped) + "".join(sections) + _methods(config, sidecar))
    return _write_html(out / f"sub-{subject}.html", title, body)


def _random_banner(models) -> str:
    """A warning at the top of a report whose models include a random-weight test model."""
    text = random_weights_warning(models)
    return f"<p class='warning'><strong>Not a scientific result:</strong> {html.escape(text)}.</p>" \
        if text else ""


def _summary(subject, config):
    items = {"Participant": f"sub-{subject}", "Models": ", ".join(config.model.models),
             "HRF model": config.stats.hrf_model,
             f"FDR level ({FDR_SCOPES[config.stats.fdr_scope]})": config.stats.fdr_q,
             "Stimulus rate (Hz)": config.stimuli.stim_rate, "bids_vlm version": __version__}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items.items())
    return f"<h2>Summary</h2><table class='summary'>{rows}</table>"


def _methods(config, sidecar):
    refs = "".join(f"<li>{html.escape(c)}</li>" for c in CITATIONS)
    return (f"<h2>Methods</h2><p>{html.escape(methods_text(config, sidecar))}</p>"
            f"<h3>References</h3><ol>{refs}</ol>")


def _unit_section(table_path, sidecar, figdir, out):
    table = pd.read_csv(table_path, sep="\t")
    stem = table_path.name.replace("_neurons.tsv", "")
    model = sidecar.get("Model", "")
    space = _space(table_path.name)
    parts = [f"<h2>{html.escape(stem)}</h2>",
             f"<p>Model <b>{html.escape(model)}</b>; space: {html.escape(space or 'native')}; "
             f"{len(table)} ANs, {int(((table.n_bn_pos + table.n_bn_neg) > 0).sum())} with at "
             "least one BN.</p>",
             f"<p class='note'>{html.escape(sidecar.get('BOLDInput', ''))}</p>",
             timeline_table(sidecar.get("StimulusTimeline", {}))]
    profile = figdir / f"{stem}_layerprofile.png"
    _layer_profile(table, profile, model)
    parts.append(_figure(profile, out, "BN+ and BN- counts per layer, summed over ANs."))
    maps = _count_maps(table_path.parent, stem.replace(_desc(stem), ""), model)
    background = _background(sidecar.get("Sources", []), space)
    for stream, paths in maps.items():
        fig = figdir / f"{stem}_stream-{label(stream)}_bncount.png"
        _brain_figure(paths, fig, f"{model} {stream}: ANs per voxel (all layers)", background,
                      space)
        parts.append(_figure(fig, out, f"Number of {stream}-stream ANs (all layers) that have "
                                       "each voxel as a BN."))
    layers = table_path.with_name(table_path.name.replace("_neurons.tsv", "_layers.tsv"))
    if layers.is_file():
        parts += _polarity_and_redundancy(layers, stem, figdir, out, model)
    nets = table_path.with_name(table_path.name.replace("_neurons.tsv", "_networks.tsv"))
    parts.append("<h3>Networks</h3>")
    if nets.is_file():
        parts.append(_network_figure(nets, stem, figdir, out, model))
    parts.append(f"<p class='note'>{html.escape(sidecar.get('Networks', ''))}</p>")
    enc_table = table_path.with_name(table_path.name.replace("_neurons.tsv", "_encoding.tsv"))
    if enc_table.is_file():
        parts += _encoding_section(enc_table, stem, figdir, out, background, space, model)
    return "".join(parts)


def _polarity_and_redundancy(layers_path, stem, figdir, out, model):
    """P(layer) / N(layer) curves with their correlation, and the Jaccard overlap matrix."""
    table = pd.read_csv(layers_path, sep="\t")
    polarity = json.loads(layers_path.with_suffix(".json").read_text()).get("Polarity", {})
    streams = sorted(table.stream.unique())
    fig, axes = plt.subplots(1, len(streams), figsize=(4.5 * len(streams), 3.2), squeeze=False)
    for ax, stream in zip(axes[0], streams):
        rows = table[table.stream == stream]
        ax.plot(rows.layer, rows.mean_bn_pos, "o-", color="#d62728", label="P (BN+ per AN)")
        ax.plot(rows.layer, rows.mean_bn_neg, "o-", color="#1f77b4", label="N (BN- per AN)")
        stats = polarity.get(stream, {})
        ax.set(title=f"{model} {stream}: r={_num(stats.get('r')):.2f}, "
                     f"p={_num(stats.get('p')):.3f}", xlabel="layer", ylabel="mean count")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    pol_path = figdir / f"{stem}_polarity.png"
    _save(fig, pol_path)
    parts = ["<h3>Polarity</h3>", _figure(pol_path, out, "Mean BN+ (P) and BN- (N) per AN "
             "across layers; r is their correlation across layers (negative: mirrored trends), "
             "descriptive; p tests whether they move together from layer to layer beyond each "
             "curve's own autocorrelation (both prewhitened by their AR(1); a shared trend "
             "alone is not tested).")]
    jac_path = layers_path.with_name(layers_path.name.replace("_layers.tsv", "_jaccard.tsv"))
    if jac_path.is_file():
        jac = pd.read_csv(jac_path, sep="\t")
        fig, axes = plt.subplots(1, len(streams), figsize=(4 * len(streams), 3.4), squeeze=False)
        for ax, stream in zip(axes[0], streams):
            grid = jac[jac.stream == stream].pivot(index="layer_a", columns="layer_b",
                                                   values="mean_jaccard")
            shown = ax.imshow(grid.to_numpy(float), vmin=0, vmax=1, cmap="magma")
            ax.set(title=f"{model} {stream}", xlabel="layer", ylabel="layer",
                   xticks=range(len(grid)), xticklabels=grid.columns,
                   yticks=range(len(grid)), yticklabels=grid.index)
            fig.colorbar(shown, ax=ax, fraction=0.046)
        fig.tight_layout()
        red_path = figdir / f"{stem}_jaccard.png"
        _save(fig, red_path)
        parts += ["<h3>Redundancy</h3>", _figure(red_path, out, "Mean Jaccard overlap of the "
                  "BN maps of AN pairs within and across layers (ANs with BNs, sampled).")]
    return parts


def _num(value):
    """A sidecar number (None for undefined) as a float for formatting."""
    return float("nan") if value is None else float(value)


MAX_NETWORKS_SHOWN = 20


def _network_figure(path, stem, figdir, out, model, caption=None):
    """Bars: share of each layer's ANs that drive each network, one panel per stream."""
    table = pd.read_csv(path, sep="\t", keep_default_na=False)
    networks = [c[len("q_"):] for c in table.columns if c.startswith("q_")]
    note = ""
    if len(networks) > MAX_NETWORKS_SHOWN:  # parcellations: the most-driven networks only
        driven = table["drives"].str.split(";").explode().value_counts()
        networks = [n for n in driven.index if n in networks][:MAX_NETWORKS_SHOWN]
        note = f" The {len(networks)} networks driven by the most ANs are shown."
    streams = sorted(table.stream.unique())
    fig, axes = plt.subplots(1, len(streams), figsize=(4.8 * len(streams), 3.4), squeeze=False)
    width = 0.8 / max(1, len(networks))
    colours = plt.get_cmap("tab10")
    for ax, stream in zip(axes[0], streams):
        rows = table[table.stream == stream]
        for i, net in enumerate(networks):
            share = rows.groupby("layer")["drives"].apply(
                lambda d, n=net: d.str.split(";").apply(lambda x: n in x).mean())
            ax.bar(share.index - 0.4 + width * (i + 0.5), share.values, width=width,
                   label=net, color=colours(i % 10))
        ax.set(title=f"{model} {stream}", xlabel="layer", ylabel="share of ANs driving",
               ylim=(0, 1.02))
    axes[0][-1].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig_path = figdir / f"{stem}_networkprofile.png"
    _save(fig, fig_path)
    return _figure(fig_path, out, (caption or "Share of each layer's ANs whose BNs are enriched "
                                              "in a network (spatial null of moved atlases, BH "
                                              "across the layer's ANs x networks).")
                   + note)


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
    parts.append(_figure(fig_path, out, "Held-out Pearson r of each layer's ridge model "
                                        "(leave-one-run-out), 95th percentile and median over "
                                        "voxels."))
    prefix = stem.replace(_desc(stem), "")
    for path in _maps(enc_table.parent, f"{prefix}_desc-*_stat-preferredlayer_statmap"):
        side = _map_sidecar(path)
        if side.get("Model") != model:
            continue
        fig = figdir / f"{stem}_stream-{label(side['Stream'])}_preferredlayer.png"
        _brain_figure([path], fig, f"{model} {side['Stream']}: preferred layer", background,
                      space, threshold=0.5, cmap="viridis", reduce="first")
        parts.append(_figure(fig, out, f"Layer of the {side['Stream']} stream whose encoding "
                                       "model predicts each voxel best (held-out r)."))
    for stream, paths in _count_maps(enc_table.parent, prefix, model, "encodingr").items():
        fig = figdir / f"{stem}_stream-{label(stream)}_encodingr.png"
        _brain_figure(paths, fig, f"{model} {stream}: best held-out r over layers", background,
                      space, threshold=ENCODING_R_SHOWN, cmap="hot", reduce="max")
        parts.append(_figure(fig, out, f"Highest held-out r over the {stream} stream's layers "
                                       f"at each voxel (shown from r = {ENCODING_R_SHOWN:g})."))
    return parts


def _desc(stem):
    match = re.search(r"_desc-[A-Za-z0-9]+", stem)
    return match.group(0) if match else ""


def _space(name):
    match = re.search(r"_space-([A-Za-z0-9]+)", name)
    return match.group(1) if match else None


def _layer_profile(table, fig_path, model):
    fig, axes = plt.subplots(1, max(1, table.stream.nunique()), figsize=(4.5 * max(
        1, table.stream.nunique()), 3.2), squeeze=False)
    for ax, (stream, rows) in zip(axes[0], table.groupby("stream", sort=True)):
        sums = rows.groupby("layer")[["n_bn_pos", "n_bn_neg"]].sum()
        ax.bar(sums.index - 0.2, sums.n_bn_pos, width=0.4, label="BN+", color="#d62728")
        ax.bar(sums.index + 0.2, sums.n_bn_neg, width=0.4, label="BN-", color="#1f77b4")
        ax.set(title=f"{model} {stream}", xlabel="layer", ylabel="AN-voxel pairs")
        ax.legend(frameon=False)
    fig.tight_layout()
    _save(fig, fig_path)


def _figure(path, out, caption):
    rel = Path(path).relative_to(out).as_posix()
    return (f"<figure><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table_section(heading, table, draw, fig_path, out, caption, note) -> list[str]:
    """A report section drawn from one table: ``<h3>heading</h3>``, then ``note`` when ``table``
    is empty, else the figure ``draw(table)`` saved at ``fig_path`` with ``caption``."""
    if not table.empty:
        _save(draw(table), fig_path)
    return [f"<h3>{heading}</h3>",
            f"<p>{note}</p>" if table.empty else _figure(fig_path, out, caption)]


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:90%}"
         "table.summary th{text-align:left;padding-right:1em}.note{color:#8a4b00}"
         ".warning{color:#a00;border:2px solid #a00;padding:0.5em;background:#fff0f0}"
         ".wide{overflow-x:auto}table.drivers{border-collapse:collapse;font-size:90%}"
         "table.drivers td,table.drivers th{padding:0.1em 0.6em;border-bottom:1px solid #ddd}")


def _write_html(path, title, body) -> Path:
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
           f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return Path(path)


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
        _layer_profile(table.rename(columns={"mean_bn_pos": "n_bn_pos",
                                             "mean_bn_neg": "n_bn_neg"}), profile,
                       f"group {side.get('Model', '')}")
        parts = [f"<h2>{html.escape(stem)}</h2>",
                 f"<p>{len(side.get('Participants', []))} participant(s): "
                 f"{html.escape(', '.join(side.get('Participants', [])))}.</p>",
                 _figure(profile, out, "Mean BN+ and BN- counts per layer over participants.")]
        maps = _count_maps(out / "group", stem.replace(_desc(stem), ""), side.get("Model"),
                           "meanbncount")
        for stream, paths in maps.items():
            map_side = _map_sidecar(paths[0])
            fig = figdir / f"{stem}_stream-{label(stream)}_meanbncount.png"
            _brain_figure(paths, fig, f"group {stream}: mean ANs per voxel (all layers)", None,
                          _space(stem))
            parts.append(_figure(fig, out, f"Mean number of {stream}-stream ANs per voxel."))
        for stream, paths in _count_maps(out / "group", stem.replace(_desc(stem), ""),
                                         side.get("Model"), "meanencodingr").items():
            fig = figdir / f"{stem}_stream-{label(stream)}_meanencodingr.png"
            _brain_figure(paths, fig, f"group {stream}: best mean held-out r over layers", None,
                          _space(stem), threshold=ENCODING_R_SHOWN, reduce="max")
            parts.append(_figure(fig, out, f"Highest mean held-out r (over participants) among "
                                           f"the {stream} stream's layers at each voxel."))
        parts += _group_summaries(table_path, stem, figdir, out, side.get("Model", ""))
        sections.append("".join(parts))
    sections += architecture_sections(overlap_tables(out / "group", recursive=False), figdir,
                                      out, _table_section)
    body = "".join(sections) or "<p>No group results.</p>"
    models = [json.loads(p.with_suffix(".json").read_text()).get("Model", "").removesuffix("-qk")
              for p in sorted((out / "group").glob("*_neurons.tsv"))]
    return _write_html(out / "group.html", "bids_vlm report: group",
                       _random_banner(models) + body + _methods(config, map_side))


def _group_summaries(table_path, stem, figdir, out, model):
    """Group polarity (with each participant's mirrored r), redundancy, network, hierarchy and
    lesion sections."""
    parts = []
    layers = table_path.with_name(table_path.name.replace("_neurons.tsv", "_layers.tsv"))
    if layers.is_file():
        parts += _polarity_and_redundancy(layers, stem, figdir, out, model)
        polarity = json.loads(layers.with_suffix(".json").read_text()).get("Polarity", {})
        per_sub = "; ".join(
            f"{stream}: " + ", ".join(f"sub-{sub} r={_num(r):.2f}"
                                      for sub, r in res.get("ParticipantR", {}).items())
            for stream, res in polarity.items() if isinstance(res, dict))
        if per_sub:
            parts.append(f"<p>Mirrored-trend r of each participant: {html.escape(per_sub)}.</p>")
    nets = table_path.with_name(table_path.name.replace("_neurons.tsv", "_networks.tsv"))
    if nets.is_file():
        parts += ["<h3>Networks</h3>", _network_figure(
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
    return parts + hierarchy_sections(table_path, stem, figdir, out, _table_section, model)
