"""The report's architecture section (docs/METHOD.md 8): for a run with two or more models, the
modality specificity index per model, stream and layer (box plots drawn from the quartiles of
the ``_msi.tsv`` table) and the overlap of paired streams' BN maps against relative depth
(``_streamoverlap.tsv``). Used by the participant and group reports;
figures are written to the report's figures folder."""
from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_vlm.analysis.architecture import MSI_THRESHOLD, stream_rank  # noqa: E402
from bids_vlm.derivatives.io import read_tsv  # noqa: E402
from bids_vlm.reports.html import table_section  # noqa: E402


def architecture_sections(tables, figdir, out) -> list[str]:
    """HTML parts for each ``_streamoverlap.tsv`` in ``tables`` (with its ``_msi.tsv`` when
    there is one), each table a :func:`~bids_vlm.reports.html.table_section` (a figure, or
    the note when it is empty)."""
    parts = []
    for path in sorted(tables):
        stem = path.name[:-len("_streamoverlap.tsv")]
        side = json.loads(path.with_suffix(".json").read_text())
        models = side.get("Models", [])
        parts += [f"<h2>Architecture: {html.escape(' vs '.join(models))}</h2>",
                  f"<p>{html.escape(stem)}</p>"]
        msi_path = path.with_name(f"{stem}_msi.tsv")
        if msi_path.is_file():
            msi = read_tsv(msi_path)
            parts += table_section(
                "Modality specificity", msi, msi_figure, figdir / f"{stem}_msi.png", out,
                "Modality specificity index (v - l) / (v + l) of the ANs with BNs in the "
                "Visual or Language network (v, l: shares of the AN's BNs in them), per model, "
                "stream and layer: box from the first to the third quartile, line at the "
                "median, dot at the mean, whiskers to the extremes; n above each box. "
                f"Dashed: +-{MSI_THRESHOLD:g} (visual / language specific).",
                "The modality specificity table has no layer.")
            parts += [] if msi.empty else [_stream_table(msi)]
        else:
            parts.append("<p class='note'>Modality specificity not computed: it needs "
                         "network tables with the Visual and Language networks (MNI-space "
                         "data).</p>")
        parts += table_section(
            "Image and text BN maps", read_tsv(path), overlap_figure,
            figdir / f"{stem}_streamoverlap.png", out,
            "Overlap of the BN maps (voxels that are a BN of any AN of a layer) of each "
            "model's image and text streams, and of METER's cross-image and cross-text "
            "streams, against relative depth layer / (layers - 1); dotted: the Jaccard "
            "overlap of maps of the same sizes placed at random.",
            "No layers of paired streams are at the same relative depth.")
    return parts


def msi_figure(msi: pd.DataFrame):
    """Box plots of the MSI per layer, one panel per model (rows) and stream (columns)."""
    models = list(dict.fromkeys(msi.model))
    streams = {m: sorted(msi.stream[msi.model == m].unique(), key=stream_rank) for m in models}
    ncols = max(len(s) for s in streams.values())
    fig, axes = plt.subplots(len(models), ncols, figsize=(3.4 * ncols, 2.9 * len(models)),
                             squeeze=False, sharey=True)
    for row, model in enumerate(models):
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(streams[model]):
                ax.axis("off")
                continue
            stream = streams[model][col]
            rows = msi[(msi.model == model) & (msi.stream == stream)]
            _boxes(ax, rows)
            ax.set(title=f"{model} {stream}", xlabel="layer", ylim=(-1.15, 1.3))
            if col == 0:
                ax.set_ylabel("MSI (visual - language)")
    fig.tight_layout()
    return fig


def _boxes(ax, rows):
    stats, positions = [], []
    for _, r in rows.iterrows():
        if r.n_ans_with_msi > 0:
            stats.append({"med": r.median_msi, "q1": r.q1_msi, "q3": r.q3_msi,
                          "whislo": r.min_msi, "whishi": r.max_msi, "mean": r.mean_msi,
                          "fliers": [], "label": str(int(r.layer))})
            positions.append(int(r.layer))
        ax.text(int(r.layer), 1.12, str(int(r.n_ans_with_msi)), ha="center", fontsize=7)
    if stats:
        ax.bxp(stats, positions=positions, showmeans=True, widths=0.6,
               meanprops={"marker": "o", "markersize": 3})
    layers = rows.layer.astype(int).tolist()
    ax.set_xticks(layers, [str(k) for k in layers])
    ax.set_xlim(min(layers) - 0.6, max(layers) + 0.6)
    for y in (-MSI_THRESHOLD, MSI_THRESHOLD):
        ax.axhline(y, color="#999", linestyle="--", linewidth=0.7)
    ax.axhline(0, color="#ccc", linewidth=0.7)


def overlap_figure(overlap: pd.DataFrame):
    """Jaccard and Dice overlap of paired streams against relative depth, a line per model and
    pair of streams."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colours = plt.get_cmap("tab10")
    keys = list(dict.fromkeys(zip(overlap.model, overlap.stream_a, overlap.stream_b)))
    for i, (model, a, b) in enumerate(keys):
        rows = overlap[(overlap.model == model) & (overlap.stream_a == a)
                       & (overlap.stream_b == b)].sort_values("relative_depth")
        style = {"color": colours(i % 10), "marker": "o", "label": f"{model}: {a} vs {b}"}
        axes[0].plot(rows.relative_depth, rows.jaccard, **style)
        axes[0].plot(rows.relative_depth, rows.chance_jaccard, color=style["color"],
                     linestyle=":", linewidth=1)
        axes[1].plot(rows.relative_depth, rows.dice, **style)
    for ax, name in zip(axes, ("Jaccard", "Dice")):
        ax.set(xlabel="relative depth layer / (layers - 1)", ylabel=f"{name} overlap",
               xlim=(-0.05, 1.05), ylim=(-0.02, 1.02))
    if keys:
        axes[1].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def stream_summary(msi: pd.DataFrame) -> pd.DataFrame:
    """Per model and stream, over its layers: ANs with an index, their mean index and the
    shares that are visual and language specific (layer rows weighted by their ANs)."""
    rows = []
    for (model, stream), part in msi.groupby(["model", "stream"], sort=False):
        n = part.n_ans_with_msi.to_numpy(float)
        total = n.sum()

        def weighted(col, p=part, w=n, t=total):
            return float(np.nansum(p[col].to_numpy(float) * w) / t) if t else float("nan")
        rows.append({"model": model, "stream": stream, "ANs with an index": int(total),
                     "mean MSI": weighted("mean_msi"),
                     f"share > {MSI_THRESHOLD:g}": weighted("share_visual"),
                     f"share < -{MSI_THRESHOLD:g}": weighted("share_language")})
    return pd.DataFrame(rows)


def _stream_table(msi):
    table = stream_summary(msi)
    return ("<p>Over all analysed layers of each stream:</p><div class='wide'>" + table.to_html(
        index=False, float_format=lambda x: f"{x:.3g}", na_rep="n/a", classes="drivers",
        border=0) + "</div>")


def overlap_tables(folder: Path, recursive: bool) -> list[Path]:
    """The ``_streamoverlap.tsv`` tables of a participant's folder (recursive) or the group's."""
    return sorted(folder.rglob("*_streamoverlap.tsv") if recursive
                  else folder.glob("*_streamoverlap.tsv"))
