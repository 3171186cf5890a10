"""The group report's hierarchy and virtual-lesion sections (docs/METHOD.md 8-9): bars of each
network's mean preferred depth (``_hierarchy.tsv``) and the lesion curves, targeted against
random removal (``_lesion.tsv``). Used by the participant and group reports; figures are written to the
report's figures folder."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_vlm.derivatives.io import read_tsv  # noqa: E402
from bids_vlm.reports.html import table_section  # noqa: E402


def hierarchy_sections(neurons_path, stem, figdir, out, model) -> list[str]:
    """HTML parts for the ``_hierarchy.tsv`` and ``_lesion.tsv`` next to ``neurons_path``
    (none when they are missing), each table a :func:`~bids_vlm.reports.html.table_section`
    (a figure, or the note when it is empty)."""
    parts = []
    hier = Path(str(neurons_path).replace("_neurons.tsv", "_hierarchy.tsv"))
    if hier.is_file():
        parts += table_section(
            "Hierarchy", read_tsv(hier).dropna(subset=["mean_preferred_depth"]),
            lambda table: depth_figure(table, model), figdir / f"{stem}_hierarchy.png", out,
            "Mean relative depth (0: first layer, 1: last) of the preferred layer of each "
            "network's voxels, mean over participants; bars: SD across participants.",
            "No network has voxels with a preferred layer.")
    lesion = Path(str(neurons_path).replace("_neurons.tsv", "_lesion.tsv"))
    if lesion.is_file():
        parts += table_section(
            "Virtual lesion", read_tsv(lesion), lambda table: lesion_figure(table, model),
            figdir / f"{stem}_lesion.png", out,
            "Held-out encoding r of each network as the ANs with the most BNs in it are "
            "removed (solid) or random ANs are removed (dashed), mean over participants.",
            "No network is driven by an AN of any stream.")
    return parts


def depth_figure(table: pd.DataFrame, model: str):
    """Bars of mean_preferred_depth per network (error bars sd_preferred_depth), one panel per
    stream."""
    streams = sorted(table.stream.unique())
    n_nets = table.network.nunique()
    fig, axes = plt.subplots(1, len(streams), figsize=(max(4.5, 0.45 * n_nets + 2) *
                                                       len(streams), 3.6), squeeze=False)
    for ax, stream in zip(axes[0], streams):
        rows = table[table.stream == stream]
        x = np.arange(len(rows))
        ax.bar(x, rows.mean_preferred_depth, yerr=rows.sd_preferred_depth.fillna(0),
               color="#4c72b0", capsize=3)
        ax.set(title=f"group {model} {stream}", ylabel="mean preferred depth", ylim=(0, 1.05),
               xticks=x)
        ax.set_xticklabels(rows.network, rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    return fig


def lesion_figure(table: pd.DataFrame, model: str):
    """Mean held-out r against the share of ANs removed, per network (colour), targeted
    (solid) and random (dashed), one panel per stream."""
    streams = sorted(table.stream.unique())
    networks = list(dict.fromkeys(table.network))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(streams), figsize=(4.8 * len(streams), 3.4), squeeze=False)
    for ax, stream in zip(axes[0], streams):
        for i, net in enumerate(networks):
            rows = table[(table.stream == stream) & (table.network == net)]
            if rows.empty:
                continue
            ax.plot(rows.step, rows.mean_r_targeted, "o-", color=colours(i % 10), label=net)
            ax.plot(rows.step, rows.mean_r_random, "o--", color=colours(i % 10), alpha=0.6)
        ax.plot([], [], "k--", alpha=0.6, label="random removal")
        ax.set(title=f"group {model} {stream}", xlabel="share of ANs removed",
               ylabel="mean held-out r")
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig
