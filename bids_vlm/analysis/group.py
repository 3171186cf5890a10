"""Group statistics: the participants' maps and tables combined (what
:mod:`bids_vlm.derivatives.group` writes), computed here once.

- maps: means of Fisher z, BN-count proportions, a one-sample t of the held-out r with BH
  (:func:`group_maps`, :func:`one_sample`);
- networks: the participants' enrichment p combined with Fisher's method, BH per layer, the
  drivers per network and stream, the polarity curves (:func:`group_networks`,
  :func:`network_drivers`, :func:`group_polarity`);
- hierarchy and lesion: the participants' tables averaged, a participant's sessions first
  (:func:`group_hierarchy`, :func:`group_lesion`, in the column order of
  :data:`HIERARCHY_FIELDS` and :data:`LESION_FIELDS`);
- architecture: the stream-overlap tables averaged (:func:`group_overlap`);
- the across-subjects noise ceiling: which participants saw the same stimulus sequence
  (:func:`matching_participants`).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
from scipy import stats

from bids_vlm.analysis.summaries import modality_specificity, polarity_curves

HIERARCHY_FIELDS = ("stream", "network", "n_layers", "mean_n_voxels", "mean_n_voxels_with_layer",
                    "mean_preferred_layer", "mean_preferred_depth", "sd_preferred_depth",
                    "n_participants")
LESION_FIELDS = ("network", "stream", "step", "layers", "mean_n_removed", "mean_r_targeted",
                 "mean_r_random", "sd_r_targeted", "sd_r_random", "n_participants")


def group_maps(stack: np.ndarray, stat: str) -> dict:
    """Group statistics of participants' maps.

    stack: (n_subjects, X, Y, Z) maps of one statistic. For ``bncount`` returns {"meanbncount",
    "propbn"}; for ``r`` / ``encodingr`` {"meanr"} / {"meanencodingr"} (mean of Fisher z,
    transformed back to r); for ``encodingr2`` {"meanencodingr2"}; other statistics are not
    combined (e.g. the preferred layer).
    """
    if stat == "bncount":
        return {"meanbncount": stack.mean(0), "propbn": (stack > 0).mean(0)}
    if stat == "r":
        z = np.arctanh(np.clip(stack, -0.999999, 0.999999))
        return {"meanr": np.tanh(z.mean(0))}
    if stat == "encodingr":
        z = np.arctanh(np.clip(stack, -0.999999, 0.999999))
        return {"meanencodingr": np.tanh(z.mean(0)), **one_sample(z)}
    if stat == "encodingr2":
        return {"meanencodingr2": stack.mean(0)}
    return {}


def one_sample(z: np.ndarray) -> dict:
    """One-sample t-test of participants' Fisher-z held-out r against 0 (one-sided, r > 0),
    with Benjamini-Hochberg q across the voxels where every participant has a value.

    z: (n_subjects, X, Y, Z). Returns {"encodingt", "encodingq"} (q = 1 outside those voxels),
    or {} with fewer than 2 participants.
    """
    n = z.shape[0]
    if n < 2:
        return {}
    valid = np.all(z != 0, axis=0)
    sd = z.std(0, ddof=1)
    t = np.divide(z.mean(0) * np.sqrt(n), sd, out=np.zeros(z.shape[1:]), where=sd > 0)
    q = np.ones(z.shape[1:])
    if valid.any():
        q[valid] = stats.false_discovery_control(stats.t.sf(t[valid], n - 1))
    return {"encodingt": t, "encodingq": q}


def networks_of(table: pd.DataFrame) -> list[str]:
    """Network names of a per-AN network table (its ``q_<network>`` columns)."""
    return [c[2:] for c in table.columns if c.startswith("q_")]


def _drives(table: pd.DataFrame, net: str) -> np.ndarray:
    return table["drives"].fillna("").astype(str).str.split(";").apply(
        lambda d: net in d).to_numpy(bool)


def _layer_bh(out: pd.DataFrame, nets) -> None:
    """q_<net>: Benjamini-Hochberg across all ANs x networks of each stream and layer (the
    participant level's family), from the combined p_<net>; written into ``out``."""
    p = out[[f"p_{net}" for net in nets]].to_numpy(float)
    qv = np.full_like(p, np.nan)
    for _, rows in out.groupby(["stream", "layer"], sort=False).indices.items():
        block = p[rows]
        ok = np.isfinite(block)
        if ok.any():
            filled = np.full(block.shape, np.nan)
            filled[ok] = stats.false_discovery_control(block[ok])
            qv[rows] = filled
    for i, net in enumerate(nets):
        out[f"q_{net}"] = qv[:, i]


def group_networks(tables: list[tuple[str, pd.DataFrame]], q: float) -> pd.DataFrame:
    """Per-AN network table of the group from the participants' tables.

    tables: [(participant label, per-AN network table with an_id, stream, layer and per network
    n_pos_, n_neg_, frac_, p_, q_ columns and drives)], one item per participant and session.
    Returns one row per AN (the ANs' order of the first table): n_pos_/n_neg_/frac_<net> the mean
    over participants (sessions averaged first), p_<net> Fisher's combination of the participants'
    p, q_<net> BH across ANs, n_participants_driving_<net>, drives (';'-joined networks with
    q <= ``q`` and at least one BN in them, 'n/a' for none) and msi.
    """
    nets = networks_of(tables[0][1])
    frames = []
    for sub, table in tables:
        frame = table[["an_id", "stream", "layer"]].copy()
        frame["participant"] = sub
        for net in nets:
            for key in ("n_pos", "n_neg", "frac", "p"):
                frame[f"{key}_{net}"] = table[f"{key}_{net}"].to_numpy(float)
            frame[f"drives_{net}"] = _drives(table, net)
        frames.append(frame)
    every = pd.concat(frames, ignore_index=True)
    every["unit"] = every.groupby("an_id", sort=False).cumcount()  # participant x session
    order = pd.Index(tables[0][1]["an_id"])
    first = every.groupby("an_id", sort=False)[["stream", "layer"]].first().reindex(order)
    per_sub = every.groupby(["an_id", "participant"], sort=False)
    out = first.reset_index()
    for net in nets:
        means = per_sub[[f"n_pos_{net}", f"n_neg_{net}", f"frac_{net}"]].mean()
        means = means.groupby(level="an_id").mean().reindex(order)
        for col in means.columns:
            out[col] = means[col].to_numpy()
        p = every.pivot(index="an_id", columns="unit", values=f"p_{net}").reindex(order)
        out[f"p_{net}"] = stats.combine_pvalues(p.to_numpy(float), method="fisher", axis=1,
                                                nan_policy="omit").pvalue if len(out) else []
        out[f"q_{net}"] = np.nan  # (here, for the column order) BH below, per layer
        driving = per_sub[f"drives_{net}"].any().groupby(level="an_id").sum().reindex(order)
        out[f"n_participants_driving_{net}"] = driving.to_numpy(int)
    _layer_bh(out, nets)
    hits = {net: (out[f"q_{net}"] <= q) & (out[f"n_pos_{net}"] + out[f"n_neg_{net}"] > 0)
            for net in nets}
    out["drives"] = [";".join(n for n in nets if hits[n].iloc[i]) or "n/a"
                     for i in range(len(out))]
    if {"frac_Visual", "frac_Language"} <= set(out.columns):
        out["msi"] = modality_specificity(out)
    return out


def network_drivers(nets: pd.DataFrame, participant_nets: list[tuple[str, pd.DataFrame]],
                    has_bn: np.ndarray) -> pd.DataFrame:
    """Per network and stream: the number of ANs driving it at group level (``nets``, from
    :func:`group_networks`), the mean over participants of the number driving it in the
    participant, the number driving it in at least one participant, and the mean share of BNs in
    the network of the ANs with a BN (``has_bn``, (N,) bool) and of the group-level drivers."""
    rows = []
    subs = sorted({s for s, _ in participant_nets})
    for net in networks_of(nets):
        group_drive = _drives(nets, net)
        for stream in sorted(nets.stream.unique()):
            here = (nets.stream == stream).to_numpy()
            ids = set(nets.an_id[here])
            per_sub = defaultdict(set)
            for sub, table in participant_nets:
                mine = table[table.an_id.isin(ids)]
                per_sub[sub] |= set(mine.an_id[_drives(mine, net)])
            frac = nets[f"frac_{net}"].to_numpy(float)
            rows.append({
                "network": net, "stream": stream, "n_ans": int(here.sum()),
                "n_ans_driving": int((group_drive & here).sum()),
                "mean_n_ans_driving_per_participant": float(np.mean(
                    [len(per_sub[s]) for s in subs])),
                "n_ans_driving_any_participant": len(set().union(*per_sub.values())),
                "mean_frac": _mean(frac[here & has_bn]),
                "mean_frac_drivers": _mean(frac[here & group_drive])})
    return pd.DataFrame(rows)


def _mean(values):
    return float(values.mean()) if len(values) else float("nan")


def group_polarity(neurons: pd.DataFrame, nets: pd.DataFrame | None) -> dict:
    """:func:`polarity_curves` of the group neuron table (mean_bn_pos / mean_bn_neg per AN),
    and with ``nets`` of each network's BN+ / BN- counts: {stream: {..., "networks": {net:
    {"layers", "P", "N", "r", "p"}}}}."""
    table = neurons.rename(columns={"mean_bn_pos": "n_bn_pos", "mean_bn_neg": "n_bn_neg"})
    out = polarity_curves(table)
    for net in networks_of(nets) if nets is not None else []:
        per_net = nets[["stream", "layer"]].assign(n_bn_pos=nets[f"n_pos_{net}"],
                                                   n_bn_neg=nets[f"n_neg_{net}"])
        for stream, res in polarity_curves(per_net).items():
            out[stream].setdefault("networks", {})[net] = res
    return out


def _per_participant(tables, keys, values) -> pd.DataFrame:
    """The participants' tables stacked, a participant's sessions averaged: one row per
    participant and ``keys``, the mean of ``values`` (NaN skipped) and the first of the rest."""
    every = pd.concat([t.assign(participant=s) for s, t in tables], ignore_index=True)
    return every.groupby(keys + ["participant"], sort=False, dropna=False)[values].mean()


def group_hierarchy(tables: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Group hierarchy table (the columns of :data:`HIERARCHY_FIELDS`).

    tables: [(participant, hierarchy table with stream, network, n_layers, n_voxels,
    n_voxels_with_layer, mean_preferred_layer, mean_preferred_depth)], one item per
    participant and session. Rows in the order of the first table."""
    keys = ["stream", "network", "n_layers"]
    per_sub = _per_participant(tables, keys, ["n_voxels", "n_voxels_with_layer",
                                              "mean_preferred_layer", "mean_preferred_depth"])
    grouped = per_sub.groupby(level=keys, sort=False)
    out = grouped.mean().add_prefix("mean_").rename(columns={
        "mean_mean_preferred_layer": "mean_preferred_layer",
        "mean_mean_preferred_depth": "mean_preferred_depth"})
    out["sd_preferred_depth"] = grouped["mean_preferred_depth"].std(ddof=1)
    out["n_participants"] = grouped["mean_preferred_depth"].count()
    return out.reset_index()[list(HIERARCHY_FIELDS)]


def group_lesion(tables: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Group lesion table (the columns of :data:`LESION_FIELDS`).

    tables: [(participant, lesion table with network, stream, layer, step, n_removed,
    mean_r_targeted, mean_r_random)], one item per participant and session."""
    if not any(len(t) for _, t in tables):
        return pd.DataFrame(columns=list(LESION_FIELDS))
    keys = ["network", "stream", "step"]
    per_sub = _per_participant(tables, keys, ["n_removed", "mean_r_targeted",
                                              "mean_r_random"])
    grouped = per_sub.groupby(level=keys, sort=False)
    out = grouped.mean().rename(columns={"n_removed": "mean_n_removed"})
    out["sd_r_targeted"] = grouped["mean_r_targeted"].std(ddof=1)
    out["sd_r_random"] = grouped["mean_r_random"].std(ddof=1)
    out["n_participants"] = grouped.size()
    every = pd.concat([t for _, t in tables], ignore_index=True)
    out["layers"] = every.groupby(keys, sort=False)["layer"].agg(
        lambda x: ";".join(str(v) for v in sorted(set(x.astype(int)))))
    return out.reset_index()[list(LESION_FIELDS)]


PAIR_KEYS = ["model", "stream_a", "stream_b", "layer_a", "layer_b", "relative_depth_a",
             "relative_depth_b", "relative_depth"]


AVERAGED = ["n_voxels", "n_bn_a", "n_bn_b", "n_bn_both", "jaccard", "dice", "chance_jaccard"]


def group_overlap(tables: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Mean over participants of their stream-overlap tables.

    tables: [(participant, table with PAIR_KEYS and AVERAGED columns)], one item per
    participant and session. Returns one row per pair of layers (the order of the first table)
    with the means of AVERAGED, ``sd_jaccard`` (across participants, ddof 1; NaN for one) and
    ``n_participants``.
    """
    frames = [table.assign(participant=sub) for sub, table in tables]
    every = pd.concat(frames, ignore_index=True)
    # dropna=False: single-layer streams pair with no relative depth (NaN), keep their rows
    per_sub = every.groupby(PAIR_KEYS + ["participant"], sort=False, dropna=False)[
        AVERAGED].mean()
    grouped = per_sub.groupby(level=PAIR_KEYS, sort=False, dropna=False)["jaccard"]
    out = per_sub.groupby(level=PAIR_KEYS, sort=False, dropna=False).mean()
    out["sd_jaccard"] = grouped.std(ddof=1)
    out["n_participants"] = grouped.size()
    return out.reset_index()


def matching_participants(by_subject: dict) -> list:
    """The largest set of participants whose runs have identical signatures (same order);
    ties go to the first sequence in participant order."""
    groups = defaultdict(list)
    for sub in sorted(by_subject):
        groups[tuple(sig for sig, _ in by_subject[sub])].append(sub)
    return max(groups.values(), key=len) if groups else []
