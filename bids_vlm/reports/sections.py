"""Sections both reports draw: the random-weights banner, the methods and references, the
layer profile, polarity and redundancy, and the networks figure."""
from __future__ import annotations

import html
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bids_vlm import __version__  # noqa: E402
from bids_vlm.models import random_weights_warning  # noqa: E402
from bids_vlm.reports.html import figure  # noqa: E402
from bids_vlm.reports.maps import save_figure as _save  # noqa: E402


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


def random_banner(models) -> str:
    """A warning at the top of a report whose models include a random-weight test model."""
    text = random_weights_warning(models)
    return f"<p class='warning'><strong>Not a scientific result:</strong> {html.escape(text)}.</p>" \
        if text else ""


def methods_section(config, sidecar):
    refs = "".join(f"<li>{html.escape(c)}</li>" for c in CITATIONS)
    return (f"<h2>Methods</h2><p>{html.escape(methods_text(config, sidecar))}</p>"
            f"<h3>References</h3><ol>{refs}</ol>")


def polarity_and_redundancy(layers_path, stem, figdir, out, model):
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
        ax.set(title=f"{model} {stream}: r={num(stats.get('r')):.2f}, "
                     f"p={num(stats.get('p')):.3f}", xlabel="layer", ylabel="mean count")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    pol_path = figdir / f"{stem}_polarity.png"
    _save(fig, pol_path)
    parts = ["<h3>Polarity</h3>", figure(pol_path, out, "Mean BN+ (P) and BN- (N) per AN "
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
        parts += ["<h3>Redundancy</h3>", figure(red_path, out, "Mean Jaccard overlap of the "
                  "BN maps of AN pairs within and across layers (ANs with BNs, sampled).")]
    return parts


def num(value):
    """A sidecar number (None for undefined) as a float for formatting."""
    return float("nan") if value is None else float(value)


MAX_NETWORKS_SHOWN = 20


def network_figure(path, stem, figdir, out, model, caption=None):
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
    return figure(fig_path, out, (caption or "Share of each layer's ANs whose BNs are enriched "
                                              "in a network (spatial null of moved atlases, BH "
                                              "across the layer's ANs x networks).")
                   + note)


def layer_profile(table, fig_path, model):
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
