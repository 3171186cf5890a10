"""The derivatives of one analysis unit (subject, session, task, acquisition): maps, neuron
tables, sparse associations and layer-wise encoding maps."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd

from bids_vlm.analysis.atlases import load_networks
from bids_vlm.derivatives.io import (
    bids_name,
    desc_label,
    label,
    write_json,
    write_map,
    write_sparse,
    write_tsv,
)
from bids_vlm.encoding.noise_ceiling import fraction_of_ceiling
from bids_vlm.encoding.ridge import preferred_description, preferred_layer

AN_DEFINITIONS = {
    "ffn": "ffn: hidden units of each layer's feed-forward block after the nonlinearity",
    "attn": "attn: query x key product of each attention head dimension (q_d k_d of a token's "
            "own query and key), pooled over tokens",
}
NEURON_COLUMNS = {
    "an_id": "artificial neuron id: model/stream/layer/unit",
    "stream": "image, text, cross-image or cross-text",
    "layer": "layer index (0 = first layer)",
    "unit": "unit index within the layer's feed-forward block",
    "n_bn_pos": "BN+ count: voxels significantly positively associated with the AN",
    "n_bn_neg": "BN- count: voxels significantly negatively associated with the AN",
    "peak_r": "signed Pearson r at the voxel with the largest |r|",
    "peak_i": "voxel index (i) of peak_r in the map grid",
    "peak_j": "voxel index (j) of peak_r in the map grid",
    "peak_k": "voxel index (k) of peak_r in the map grid",
    "z_threshold": "critical |z| of the AN's Benjamini-Hochberg procedure (n/a: no BN)",
    "removed_share": "share of the AN regressor's variance that --bn-definition unique "
                     "removed (stimulus presence and the layer's top principal components; "
                     "n/a: marginal)",
    "mean_abs_r_layer": "mean |r| of the AN's regressor with those of the other ANs of its "
                        "layer (a seeded sample of up to 512)",
    "p_selection": "Simes p of the AN across voxels, the AN-level p that --fdr-scope selective "
                   "ranks with Benjamini-Hochberg across the layer's ANs (n/a: above q, or "
                   "--fdr-scope all)",
    "drives": "networks the AN drives (see the _networks.tsv table; absent outside MNI space)",
}


def output_model_name(model: str, config) -> str:
    """The model's name in file names and sidecars: ``<model>-qk`` for attn ANs, so that ffn
    and attn results of one model can share an output folder."""
    return model if config.model.an_kind == "ffn" else f"{model}-qk"


def unit_entities(unit: dict) -> dict:
    return {"sub": unit["subject"], "ses": unit.get("session"), "task": unit["task"],
            "acq": unit.get("acquisition"), "space": unit.get("space")}


def func_dir(output_dir, unit: dict) -> Path:
    path = Path(output_dir) / f"sub-{unit['subject']}"
    if unit.get("session"):
        path = path / f"ses-{unit['session']}"
    return path / "func"


def common_sidecar(unit: dict, attrs: dict, config) -> dict:
    preproc = ("preprocessed BOLD from the derivatives (desc-preproc)" if unit["preprocessed"]
               else "none: raw BOLD (no motion correction, slice timing or normalisation by "
                    "bids_vlm); masked, detrended, high-pass filtered and z-scored per run")
    extra = {"StimulusTimeline": unit["timeline"]} if unit.get("timeline") else {}
    return {"Sources": unit["sources"], "BOLDInput": preproc, **extra,
            "AssociationMethod": attrs["method"], "FDRLevel": float(attrs["fdr_q"]),
            "HRFModel": config.stats.hrf_model, "StimulusRate": config.stimuli.stim_rate,
            "Pooling": config.model.pooling, "ANDefinition": AN_DEFINITIONS[config.model.an_kind]}


def write_unit_outputs(association_files, encoding_files, mask_file, unit: dict, output_dir,
                       bids_dir, config, atom_files=(), lesion_files=()) -> list:
    """Maps, neuron tables, sparse associations, encoding maps and network tables of one
    analysis unit."""
    from bids_vlm.derivatives.networks import unit_networks, write_lesion

    mask = nib.load(mask_file)
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)  # (V, 3), the order of masking.apply_mask
    ents = unit_entities(unit)
    folder = func_dir(output_dir, unit)
    networks = unit_networks(mask, unit, config)  # (masks or None, sidecar fields)
    written = []
    for assoc_file in association_files:
        written += write_association_outputs(assoc_file, folder, ents, mask, ijk, unit, config,
                                             networks)
    for enc_file in encoding_files:
        written += write_encoding_outputs(enc_file, folder, ents, mask, unit, config, networks)
    for lesion_file in lesion_files:
        written += write_lesion(lesion_file, folder, ents, config,
                                {"Sources": unit["sources"]})
    for atom_file in atom_files:
        from bids_vlm.derivatives.atoms import write_atom_outputs

        written += write_atom_outputs(atom_file, folder, ents, mask, ijk, unit, config)
    from bids_vlm.derivatives.architecture import write_architecture_outputs

    return written + write_architecture_outputs(folder, ents, written)


def write_association_outputs(assoc_file, folder, ents, mask, ijk, unit, config,
                              networks=(None, {})) -> list:
    """One model's per-layer maps, per-stream redundancy maps, neuron, network and layer
    tables, and sparse significant entries."""
    from bids_vlm.derivatives.summaries import (
        write_layer_summaries,
        write_redundancy_maps,
    )

    written, rows = [], []
    entries = {"an_index": [], "voxel_index": [], "r": [], "z": [], "p": []}
    counts = {}
    with h5py.File(assoc_file, "r") as h5:
        model = output_model_name(str(h5.attrs["model"]), config)
        side = common_sidecar(unit, dict(h5.attrs), config)
        depth = layers_per_stream(h5)
        offset = 0
        for stream in h5:
            for layer in h5[stream]:
                grp = h5[f"{stream}/{layer}"]
                written += _layer_maps(folder, ents, model, stream, int(layer), grp, mask, side)
                rows.append(_neuron_rows(str(h5.attrs["model"]), stream, int(layer), grp, ijk,
                                         config.model.an_kind))
                counts[stream] = counts.get(stream, 0) + grp["bn_count"][()]
                for key in entries:
                    value = grp[key][()]
                    entries[key].append(value + offset if key == "an_index" else value)
                offset += len(grp["n_pos"])
    table = pd.concat(rows, ignore_index=True)
    merged = {k: np.concatenate(v) if v else np.zeros(0) for k, v in entries.items()}
    nets = network_table(table, merged, networks[0], config)
    side["Networks"] = networks[1].get("Networks", "")
    if nets is not None:
        table["drives"] = nets["drives"]
        written += _networks_table(folder, ents, model, nets, dict(side, **networks[1]))
    written += write_redundancy_maps(folder, ents, model, counts, mask, side)
    written += write_layer_summaries(folder, ents, model, table, merged, nets, counts, side,
                                     config.model.seed)
    written += _neuron_table(folder, ents, model, table, dict(side, LayersPerStream=depth))
    written.append(_sparse(folder, ents, model, table, entries, ijk, mask, side))
    return written


def layers_per_stream(h5) -> dict:
    """{stream: layers of the stream in the model} of an association file: its ``n_layers``
    attribute, else the model registry, else one more than the last analysed layer."""
    stored = json.loads(h5.attrs.get("n_layers", "{}"))
    if all(s in stored for s in h5):
        return {s: int(stored[s]) for s in h5}
    from bids_vlm.models import REGISTRY

    known = REGISTRY.get(str(h5.attrs["model"]))
    return {s: int(known.streams[s][0]) if known and s in known.streams
            else max(int(k) for k in h5[s]) + 1 for s in h5}


CEILING_MIN = 0.1  # no fraction of the noise ceiling where the ceiling on r is below this
ENCODING_COLUMNS = {
    "stream": "image, text, cross-image or cross-text",
    "layer": "layer index (0 = first layer)",
    "median_r": "median over in-mask voxels of the held-out Pearson r",
    "p95_r": "95th percentile over voxels of the held-out r",
    "max_r": "largest held-out r",
    "median_r2": "median over voxels of the held-out R^2",
    "n_voxels_preferred": "voxels whose preferred layer is this one: the layer with the "
                          "highest held-out r, kept only where that r is significant (the "
                          "test is PreferredLayerTest); voxels without a significant best "
                          "layer count for no layer",
}
UNTESTED = ("the layer with the highest held-out r at the voxel, -1 where no layer has r > 0 "
            "(no significance test: the encoding results have no z of the held-out r)")


def write_encoding_outputs(enc_file, folder, ents, mask, unit, config, networks=(None, {})):
    """Per layer: held-out r and R^2 maps; per stream: the preferred-layer map (only voxels
    whose best layer's held-out r is significant get one); a layer table; with networks, the
    hierarchy table (mean preferred depth per network, over those voxels)."""
    from bids_vlm.derivatives.networks import layer_count, write_hierarchy

    with h5py.File(enc_file, "r") as h5:
        if "skipped" in h5.attrs:
            return []
        model = output_model_name(str(h5.attrs["model"]), config)
        side = {"Sources": unit["sources"], "BOLDInput": common_sidecar(
                    unit, {"method": "", "fdr_q": 0}, config)["BOLDInput"],
                "HRFModel": config.stats.hrf_model, "EncodingMethod": str(h5.attrs["method"]),
                "Model": model}
        written, rows, bests, counted = [], [], {}, {}
        ceiling, test = None, preferred_description(config.stats.fdr_q)
        if "noise_ceiling" in h5:
            ceiling = h5["noise_ceiling/r"][()]
            written += _ceiling_maps(h5["noise_ceiling"], folder, ents, mask, side)
        for stream in (s for s in h5 if s not in ("banded", "noise_ceiling")):
            layers = sorted(int(k) for k in h5[stream])
            scores = np.stack([h5[f"{stream}/{k:02d}/r"][()] for k in layers])
            scored = all("z" in h5[f"{stream}/{k:02d}"] for k in layers)
            z = np.stack([h5[f"{stream}/{k:02d}/z"][()] for k in layers]) if scored else None
            best = preferred_layer(scores, layers, z, config.stats.fdr_q)
            test = test if scored else UNTESTED
            n_layers, counted[stream] = layer_count(str(h5.attrs["model"]), stream, layers)
            bests[stream] = (best, n_layers)
            for k, r in zip(layers, scores):
                r2 = h5[f"{stream}/{k:02d}/r2"][()]
                written += _encoding_maps(folder, ents, model, stream, k, (r, r2), mask, side,
                                          ceiling)
                rows.append({"stream": stream, "layer": k, "median_r": np.median(r),
                             "p95_r": np.percentile(r, 95), "max_r": r.max(),
                             "median_r2": np.median(r2),
                             "n_voxels_preferred": int((best == k).sum())})
            path = folder / bids_name(dict(ents, desc=desc_label(model, stream),
                                           stat="preferredlayer"), "statmap", ".nii.gz")
            written.append(write_map(path, best, mask, dict(
                side, Stream=stream, Units="layer index",
                Description="preferred layer: " + (preferred_description(config.stats.fdr_q)
                                                   if scored else UNTESTED))))
        if "banded" in h5:
            written += _banded_outputs(h5["banded"], folder, ents, model, mask, side)
    if networks[0] is not None and bests:
        written += write_hierarchy(folder, ents, model, bests, networks[0], networks[1],
                                   dict(side, LayerCount=counted, PreferredLayerTest=test))
    table = folder / bids_name(dict(ents, desc=desc_label(model)), "encoding", ".tsv")
    sidecar = {c: {"Description": d} for c, d in ENCODING_COLUMNS.items()}
    sidecar.update(side)
    sidecar["PreferredLayerTest"] = test
    return written + [write_tsv(table, pd.DataFrame(rows)),
                      write_json(table.with_suffix(".json"), sidecar)]


def _banded_outputs(group, folder, ents, model, mask, side):
    """Per shared layer index: joint held-out r / R^2 and each stream's share of R^2."""
    written, rows = [], []
    for layer in sorted(group):
        grp = group[layer]
        desc = desc_label(model, "banded", int(layer))
        meta = dict(side, Layer=int(layer), Streams=[k[6:] for k in grp if k.startswith("split_")])
        for stat, key, text in [("encodingr", "r", "held-out r of the banded ridge model"),
                                ("encodingr2", "r2", "held-out R^2 of the banded ridge model")]:
            written.append(write_map(folder / bids_name(dict(ents, desc=desc, stat=stat),
                                                        "statmap", ".nii.gz"),
                                     grp[key][()], mask, dict(meta, Description=text)))
        row = {"layer": int(layer), "median_r2": float(np.median(grp["r2"][()]))}
        for key in (k for k in grp if k.startswith("split_")):
            stream = key[len("split_"):]
            written.append(write_map(
                folder / bids_name(dict(ents, desc=desc, stat=f"splitr2{label(stream)}"), "statmap",
                                   ".nii.gz"), grp[key][()], mask,
                dict(meta, Stream=stream, Description=f"share of the banded model's held-out "
                                                      f"R^2 explained by the {stream} stream")))
            row[f"median_split_r2_{stream}"] = float(np.median(grp[key][()]))
        rows.append(row)
    table = folder / bids_name(dict(ents, desc=desc_label(model)), "bandedencoding", ".tsv")
    return written + [write_tsv(table, pd.DataFrame(rows)),
                      write_json(table.with_suffix(".json"), dict(side, Description=(
                          "banded ridge across streams (himalaya GroupRidgeCV) at each layer "
                          "index: median held-out R^2 and each stream's median share")))]


def _ceiling_maps(group, folder, ents, mask, side):
    """The noise ceiling of the encoding (repeated runs): ceiling of the held-out r, ncsnr."""
    meta = dict(side, NoiseCeilingMethod=str(group.attrs["method"]))
    meta.pop("Model", None)
    meta.pop("EncodingMethod", None)
    return [write_map(folder / bids_name(dict(ents, desc="noiseceiling", stat=stat), "statmap",
                                         ".nii.gz"), group[key][()], mask,
                      dict(meta, Units=units, Description=text))
            for stat, key, units, text in [
                ("rceiling", "r", "r", "noise ceiling of the held-out Pearson r on one run: "
                 "the r of a model predicting the stimulus-driven signal exactly"),
                ("ncsnr", "ncsnr", "ratio", "noise-ceiling signal-to-noise ratio: signal sd / "
                 "noise sd across repeated runs")]]


def _encoding_maps(folder, ents, model, stream, layer, scores, mask, side, ceiling=None):
    r, r2 = scores
    desc = desc_label(model, stream, layer)
    meta = dict(side, Stream=stream, Layer=layer)
    fraction = [] if ceiling is None else [
        write_map(folder / bids_name(dict(ents, desc=desc, stat="encodingrfrac"), "statmap",
                                     ".nii.gz"), fraction_of_ceiling(r, ceiling, CEILING_MIN),
                  mask, dict(meta, Units="fraction", Description=(
                      "held-out Pearson r of the layer's ridge encoding model divided by the "
                      f"noise ceiling (desc-noiseceiling_stat-rceiling); NaN where the "
                      f"ceiling is <= {CEILING_MIN}")))]
    return fraction + [
        write_map(folder / bids_name(dict(ents, desc=desc, stat="encodingr"), "statmap",
                                     ".nii.gz"), r,
                  mask, dict(meta, Units="r", Description=(
                      "held-out Pearson r of the layer's ridge encoding model"))),
        write_map(folder / bids_name(dict(ents, desc=desc, stat="encodingr2"), "statmap",
                                     ".nii.gz"), r2, mask,
                  dict(meta, Units="R^2", Description="held-out R^2 of the layer's ridge "
                                                      "encoding model")),
    ]


def _layer_maps(folder, ents, model, stream, layer, grp, mask, side):
    desc = desc_label(model, stream, layer)
    meta = dict(side, Model=model, Stream=stream, Layer=layer, NumberOfANs=len(grp["n_pos"]))
    count = dict(meta, Description=f"number of ANs of {model} {stream} layer {layer} that have "
                                   "the voxel as a BN (BN+ or BN-)", Units="count")
    best = dict(meta, Description=f"signed Pearson r of the AN of {model} {stream} layer {layer} "
                                  "with the largest |r| at the voxel", Units="r")
    return [
        write_map(folder / bids_name(dict(ents, desc=desc, stat="bncount"), "statmap", ".nii.gz"),
                  grp["bn_count"][()], mask, count),
        write_map(folder / bids_name(dict(ents, desc=desc, stat="r"), "statmap", ".nii.gz"),
                  grp["best_r"][()], mask, best),
    ]


def _neuron_rows(model, stream, layer, grp, ijk, kind):
    from bids_vlm.models.base import an_id

    n = len(grp["n_pos"])
    peak = ijk[grp["peak_voxel"][()]] if len(ijk) else np.zeros((n, 3), int)
    thr = grp["z_threshold"][()].astype(float)
    return pd.DataFrame({
        "an_id": [an_id(model, stream, layer, u, kind) for u in range(n)], "stream": stream,
        "layer": layer, "unit": np.arange(n), "n_bn_pos": grp["n_pos"][()],
        "n_bn_neg": grp["n_neg"][()], "peak_r": grp["peak_r"][()],
        "peak_i": peak[:, 0], "peak_j": peak[:, 1], "peak_k": peak[:, 2],
        "z_threshold": np.where(np.isfinite(thr), thr, np.nan),
        "p_selection": _column(grp, "p_an", n),
        "removed_share": _column(grp, "removed_share", n),
        "mean_abs_r_layer": _column(grp, "mean_abs_r", n)})


def _column(grp, name, n):
    """(n,) a per-AN array of the association's layer group, NaN when it was not computed."""
    return grp[name][()] if name in grp else np.full(n, np.nan)


def network_table(table, entries, masks, config):
    """Per-AN network table (None without network masks)."""
    from bids_vlm.analysis.summaries import modality_specificity
    from bids_vlm.derivatives.networks import network_enrichment

    if masks is None:
        return None
    atlases = load_networks(config.networks.atlas)
    layers = table["stream"].astype(str) + "/" + table["layer"].astype(str)  # BH families
    res = network_enrichment(entries["an_index"], entries["voxel_index"], entries["r"],
                             len(table), masks, config, layers)
    columns = {"an_id": table["an_id"], "stream": table["stream"], "layer": table["layer"]}
    for name, cols in res.items():
        for key in ("n_pos", "n_neg", "frac", "p_hypergeom", "p", "q"):
            columns[f"{key}_{name}"] = cols[key]
    out = pd.DataFrame(columns)  # at once: parcellations have hundreds of networks
    out["drives"] = [";".join(n for n in res if res[n]["drives"][i]) or "n/a"
                     for i in range(len(table))]
    out["msi"] = modality_specificity(out, sum((a.visual for a in atlases), ()),
                                      sum((a.language for a in atlases), ()))
    return out


def _networks_table(folder, ents, model, nets, side):
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "networks", ".tsv")
    sidecar = {"an_id": {"Description": NEURON_COLUMNS["an_id"]},
               "drives": {"Description": "networks the AN drives (enrichment q <= FDR level)"},
               "msi": {"Description": "modality specificity index (v - l) / (v + l), v and l "
                                      "the shares of the AN's BNs in the visual networks "
                                      "(Visual; Yeo-17 VisCent and VisPeri; Schaefer *_Vis_*) "
                                      "and the Language network (n/a: no BN in either, or "
                                      "no such network in the atlas)"}}
    for col in nets.columns:
        key = next((k for k in _NETWORK_COLUMN if col.startswith(k + "_")), None)
        if key:
            sidecar[col] = {"Description": _NETWORK_COLUMN[key] + col[len(key) + 1:]}
    sidecar.update(side)
    return [write_tsv(path, nets), write_json(path.with_suffix(".json"), sidecar)]


_NETWORK_COLUMN = {"n_pos": "BN+ of the AN in network ", "n_neg": "BN- of the AN in network ",
                   "frac": "share of the AN's BNs in network ",
                   # before "p": the first key that prefixes a column names it
                   "p_hypergeom": "hypergeometric enrichment p, which assumes independent "
                                  "voxels (anti-conservative for spatially smooth BN maps; not "
                                  "used for drives), of the AN's BNs in network ",
                   "p": "enrichment p from the spatial null (random rigid moves of the atlas, "
                        "which keep the BN map's spatial autocorrelation; see Networks; the "
                        "hypergeometric p when the spatial null is off) of the AN's BNs in "
                        "network ",
                   "q": "Benjamini-Hochberg q (across all ANs x networks of the AN's layer) of "
                        "the enrichment p in network "}


def _neuron_table(folder, ents, model, table, side):
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "neurons", ".tsv")
    sidecar = {col: {"Description": text} for col, text in NEURON_COLUMNS.items()}
    sidecar["Model"] = model
    sidecar.update(side)
    return [write_tsv(path, table), write_json(path.with_suffix(".json"), sidecar)]


def _sparse(folder, ents, model, table, entries, ijk, mask, side):
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "association", ".h5")
    data = {k: np.concatenate(v) if v else np.zeros(0) for k, v in entries.items()}
    data["an_id"] = table["an_id"].to_numpy(str)
    data["voxel_ijk"] = ijk
    attrs = {"model": model, "method": side["AssociationMethod"], "fdr_q": side["FDRLevel"],
             "grid_shape": list(mask.shape[:3]), "affine": np.asarray(mask.affine),
             "layout": "significant entries: an_index (row of an_id), voxel_index (row of "
                       "voxel_ijk), r, z (calibrated, signed), p (two-sided, uncorrected)"}
    return write_sparse(path, data, attrs)
