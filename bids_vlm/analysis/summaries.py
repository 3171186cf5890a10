"""Per-layer summaries of the AN -> BN results (docs/METHOD.md 8): polarity, redundancy (Jaccard
overlap of BN maps), network drive per layer and modality specificity.

All functions are pure, over the neurons table (one row per AN: stream, layer, n_bn_pos,
n_bn_neg), the significant entries (an_index, voxel_index, r) and, in MNI space, the networks
table (frac_<network>, drives).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bids_vlm.jit import njit


def polarity_curves(table: pd.DataFrame, n_surrogates: int = 9999, seed: int = 0) -> dict:
    """Per stream: P(layer) and N(layer), the mean BN+ and BN- count per AN of each layer, the
    Pearson r between them across layers (descriptive; the paper's "mirrored" trends give
    r < 0) and a test that keeps each curve's autocorrelation (:func:`_prewhitened_corr`).

    Layer curves are smooth, so shuffling the layer order is no valid null: two unrelated
    random walks over 12 layers give a shuffle p < 0.05 in about a third of cases. The p
    here is that of the prewhitened correlation (two-sided, ``n_surrogates`` seeded
    re-orderings, p = (1 + #as extreme) / (1 + n_surrogates), never 0). It tests whether
    P and N move together from layer to layer beyond their own autocorrelation; a shared
    smooth trend alone (e.g. two straight lines) is not testable with ~12 layers (p NaN when
    nothing is left after prewhitening, or fewer than 3 residuals).

    table: one row per AN (stream, layer, n_bn_pos, n_bn_neg). Returns {stream: {"layers",
    "P", "N" (lists, one value per layer), "r", "r_prewhitened", "p"}}.
    """
    out = {}
    for stream, rows in table.groupby("stream", sort=True):
        means = rows.groupby("layer")[["n_bn_pos", "n_bn_neg"]].mean()
        pos, neg = means.n_bn_pos.to_numpy(float), means.n_bn_neg.to_numpy(float)
        r = _pearson(pos, neg)
        r_pw, p = _prewhitened_corr(pos, neg, n_surrogates, seed)
        out[stream] = {"layers": means.index.tolist(), "P": pos.tolist(), "N": neg.tolist(),
                       "r": r, "r_prewhitened": r_pw, "p": p}
    return out


def _pearson(a, b) -> float:
    """Pearson r of two (L,) curves; NaN with fewer than 3 points or a constant curve (up to
    rounding)."""
    if len(a) < 3 or any(np.ptp(x) <= 1e-9 * max(1.0, np.abs(x).max()) for x in (a, b)):
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _ar1_residuals(x: np.ndarray) -> np.ndarray:
    """(L - 1,) innovations x[t] - phi * x[t-1] of an (L,) curve, phi its lag-1 least-squares
    slope (with intercept) clipped to [0, 1]: 1 gives the first differences (random walk),
    0 the curve itself (no autocorrelation)."""
    lag, now = x[:-1] - x[:-1].mean(), x[1:] - x[1:].mean()
    phi = float(np.clip(lag @ now / (lag @ lag), 0, 1)) if lag @ lag > 0 else 0.0
    return x[1:] - phi * x[:-1]


def _prewhitened_corr(a, b, n_surrogates: int, seed: int) -> tuple:
    """Prewhitened correlation of two (L,) curves and its two-sided surrogate p.

    Each curve is filtered by its own fitted AR(1) (:func:`_ar1_residuals`; Box-Jenkins
    prewhitening, Haugh 1976) and the Pearson r of the two (L - 1,) residual series is
    compared with that of ``n_surrogates`` seeded random re-orderings of b's residuals:
    p = (1 + #{|r_null| >= |r_obs|}) / (1 + n_surrogates). Returns (r_prewhitened, p);
    both NaN with fewer than 3 residuals or a constant residual series."""
    ea, eb = _ar1_residuals(a), _ar1_residuals(b)
    observed = _pearson(ea, eb)
    if np.isnan(observed):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ca, cb = ea - ea.mean(), eb - eb.mean()
    surrogates = rng.permuted(np.tile(cb, (n_surrogates, 1)), axis=1)  # (n_surrogates, L - 1)
    null = surrogates @ ca / np.sqrt((ca @ ca) * (cb @ cb))
    extreme = int(np.sum(np.abs(null) >= abs(observed) - 1e-12))
    return observed, (1 + extreme) / (1 + n_surrogates)


def jaccard_matrix(an_index, voxel_index, ans: np.ndarray, n_vox: int) -> np.ndarray:
    """(k, k) Jaccard overlap of the BN sets (voxels, either sign) of the ANs ``ans`` (k,)
    distinct; an (AN, voxel) pair appears at most once among the entries (E,).

    Two ANs without any BN have overlap 0 (not 0/0). The intersections are counted voxel by
    voxel (:func:`_shared_counts`, compiled): a sparse product of the (k, V) membership took
    about 10 s a stream at the paper's scale."""
    ans = np.asarray(ans)
    order = np.argsort(ans, kind="stable")
    ranked = ans[order]
    an_index, voxel_index = np.asarray(an_index), np.asarray(voxel_index)
    pos = np.searchsorted(ranked, an_index).clip(0, max(len(ans) - 1, 0))
    keep = ranked[pos] == an_index if len(ans) else np.zeros(len(an_index), bool)
    counts = _shared_counts(pos[keep].astype(np.int64), voxel_index[keep].astype(np.int64),
                            len(ans), int(n_vox))
    inter = np.empty((len(ans), len(ans)))
    inter[np.ix_(order, order)] = counts  # rows of ans in the order asked
    size = np.diag(inter)
    union = size[:, None] + size[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


SHARED_ROWS = 128  # rows of the counts filled at a time: 128 x k int32 stay in L2


@njit
def _shared_counts(rows, voxels, k, n_vox):  # pragma: no cover - compiled
    """(k, k) int32: for each pair of rows, the voxels they share (entries (rows, voxels))."""
    by_voxel = _sorted_by(voxels, _sorted_by(rows, np.arange(len(rows)), k), n_vox)
    members, start = rows[by_voxel], np.zeros(n_vox + 1, np.int64)
    for v in voxels:
        start[v + 1] += 1
    for v in range(n_vox):
        start[v + 1] += start[v]
    cursor = start[:-1].copy()  # each voxel's first member not counted yet
    out = np.zeros((k, k), np.int32)
    for r0 in range(0, k, SHARED_ROWS):  # a block of rows: every pair (i <= j), i in it
        r1 = min(r0 + SHARED_ROWS, k)
        for v in range(n_vox):
            end = start[v + 1]
            while cursor[v] < end and members[cursor[v]] < r1:
                row = out[members[cursor[v]]]
                for j in range(cursor[v], end):
                    row[members[j]] += 1
                cursor[v] += 1
    for a in range(k):
        for b in range(a + 1, k):
            out[b, a] = out[a, b]
    return out


@njit
def _sorted_by(keys, items, n_keys):  # pragma: no cover - compiled
    """items (E,) reordered by keys[items] (a stable counting sort; keys in 0..n_keys - 1)."""
    start = np.zeros(n_keys + 1, np.int64)
    for i in items:
        start[keys[i] + 1] += 1
    for j in range(n_keys):
        start[j + 1] += start[j]
    out = np.empty(len(items), np.int64)
    for i in items:
        out[start[keys[i]]] = i
        start[keys[i]] += 1
    return out


def layer_jaccard(table, bns, n_vox, max_ans=200, seed=0) -> pd.DataFrame:
    """Mean Jaccard overlap of BN maps between the ANs of two layers (same stream), for ANs
    that have at least one BN; at most ``max_ans`` of them per layer, drawn at random (seeded:
    :func:`jaccard_sample`).

    bns: (an_index (E,), voxel_index (E,)) the significant entries, or a function of (k,) AN
    rows of ``table`` returning those of these ANs (called once per stream with its sampled
    ANs, so that only they need be read). Returns rows (stream, layer_a, layer_b,
    mean_jaccard, n_a, n_b); within a layer the pairs are distinct ANs.
    """
    if not callable(bns):
        an_all, vox_all = (np.asarray(x) for x in bns)

        def bns(ans):
            return an_all, vox_all
    rows = []
    for stream, chosen in jaccard_sample(table, max_ans, seed).items():
        layers = sorted(chosen)
        every = np.concatenate([chosen[k] for k in layers])
        an_index, voxel_index = bns(every)
        jac = jaccard_matrix(np.asarray(an_index), np.asarray(voxel_index), every, n_vox)
        edges = np.cumsum([0] + [len(chosen[k]) for k in layers])
        for i, a in enumerate(layers):
            for j, b in enumerate(layers):
                block = jac[edges[i]:edges[i + 1], edges[j]:edges[j + 1]]
                if a == b:
                    n = len(block)
                    value = (block.sum() - np.trace(block)) / (n * (n - 1)) if n > 1 else np.nan
                else:
                    value = block.mean()
                rows.append({"stream": stream, "layer_a": a, "layer_b": b,
                             "mean_jaccard": value, "n_a": len(chosen[a]), "n_b": len(chosen[b])})
    return pd.DataFrame(rows, columns=["stream", "layer_a", "layer_b", "mean_jaccard", "n_a",
                                       "n_b"])


def jaccard_sample(table, max_ans=200, seed=0) -> dict:
    """{stream: {layer: (k,) rows of ``table``}}: the ANs with at least one BN of each layer,
    at most ``max_ans`` of them drawn at random (one seeded generator over streams by name
    and their layers in order)."""
    rng = np.random.default_rng(seed)
    has_bn = (table.n_bn_pos + table.n_bn_neg).to_numpy() > 0
    return {stream: {layer: _sample(group.index.to_numpy(), max_ans, rng)
                     for layer, group in sub.groupby("layer")}
            for stream, sub in table[has_bn].groupby("stream", sort=True)}


def _sample(index, k, rng):
    return index if len(index) <= k else np.sort(rng.choice(index, k, replace=False))


def modality_specificity(nets: pd.DataFrame, visual=("Visual",),
                         language=("Language",)) -> np.ndarray:
    """(N,) (v - l) / (v + l) with v, l the shares of an AN's BNs in the visual and language
    networks (each the sum over the named, non-overlapping networks); NaN where the AN has no
    BN in either, or where the atlas has no such network."""
    def share(names):
        cols = [f"frac_{n}" for n in ((names,) if isinstance(names, str) else names)]
        cols = [c for c in cols if c in nets.columns]
        return nets[cols].to_numpy(float).sum(1) if cols else np.full(len(nets), np.nan)

    v, lang = share(visual), share(language)
    total = v + lang
    return np.divide(v - lang, total, out=np.full(len(v), np.nan), where=total > 0)


def layer_table(table, nets=None) -> pd.DataFrame:
    """Per stream and layer: ANs, ANs with BNs, mean BN+ / BN-, the mean inter-AN |r| and the
    mean share removed by --bn-definition unique (when the neurons table has them), and in MNI
    space the share of ANs driving each network and the mean modality specificity index."""
    extra = [c for c in ("mean_abs_r_layer", "removed_share") if c in table]
    frame = table[["stream", "layer", "n_bn_pos", "n_bn_neg"] + extra].copy()
    frame["has_bn"] = (frame.n_bn_pos + frame.n_bn_neg) > 0
    agg = {"n_ans": ("has_bn", "size"), "n_ans_with_bn": ("has_bn", "sum"),
           "mean_bn_pos": ("n_bn_pos", "mean"), "mean_bn_neg": ("n_bn_neg", "mean")}
    agg.update({{"mean_abs_r_layer": "mean_inter_an_abs_r",
                 "removed_share": "mean_removed_share"}[c]: (c, "mean") for c in extra})
    if nets is not None:
        networks = [c[2:] for c in nets.columns if c.startswith("q_")]
        drives = nets["drives"].fillna("").astype(str).str.split(";")
        cols = {f"share_driving_{net}": drives.apply(lambda d, n=net: n in d).to_numpy()
                for net in networks}  # one concat: many networks (parcellations) stay fast
        cols["msi"] = (nets["msi"].to_numpy(float) if "msi" in nets
                       else modality_specificity(nets))
        frame = pd.concat([frame, pd.DataFrame(cols, index=frame.index)], axis=1)
        agg.update({c: (c, "mean") for c in cols if c != "msi"})
        agg["mean_msi"] = ("msi", "mean")
    return frame.groupby(["stream", "layer"], sort=True).agg(**agg).copy().reset_index()
