"""The derivatives of one model's association: per-layer maps, per-stream redundancy maps, the
neuron, network and layer tables, and the compact ``_association.h5`` (each AN's BNs with their
sign, exact r, z, p of its top voxels: :mod:`bids_vlm.stats.bnstore`).

The work file ``association.h5`` is read one layer at a time: a layer's BNs are read, used
(union map, network enrichment) and dropped before the next layer is read, so memory holds one
layer's entries at most (plus per-AN and per-voxel arrays of all layers)."""
from __future__ import annotations

import contextlib

import h5py
import numpy as np
import pandas as pd

from bids_vlm.analysis.atlases import load_networks
from bids_vlm.brainmask import brain_models, is_grayordinates, peak_columns, row_keys
from bids_vlm.stats import bnstore
from bids_vlm.derivatives.io import atomic_path, write_json, write_map, write_tsv
from bids_vlm.names import bids_name, desc_label, an_id
from bids_vlm.derivatives.participant.common import (
    NEURON_COLUMNS,
    common_sidecar,
    layers_per_stream,
    output_model_name,
)
from bids_vlm.analysis.summaries import modality_specificity
from bids_vlm.analysis.layers import network_enrichment, read_enrichment
from bids_vlm.derivatives.participant.summaries import write_layer_summaries, write_redundancy_maps


def write_association_outputs(assoc_file, folder, ents, mask, ijk, unit, config,
                              networks=(None, {}), enrichment_file=None) -> list:
    """One model's per-layer maps, per-stream redundancy maps, neuron, network and layer
    tables, and compact BN file. ijk: (V, 3) the in-mask voxels; networks: (masks or None,
    sidecar fields) of :func:`bids_vlm.derivatives.participant.networks.unit_networks`;
    enrichment_file: the layers' network enrichment
    (:func:`bids_vlm.analysis.layers.write_enrichment`, computed once for the lesion and this
    table), None: computed here."""
    written, rows, counts, maps, enriched = [], [], {}, {}, []
    masks = networks[0]
    stored = enrichment_file is not None and masks is not None
    with h5py.File(assoc_file, "r") as h5, \
            (h5py.File(enrichment_file, "r") if stored else contextlib.nullcontext()) as known:
        model = output_model_name(str(h5.attrs["model"]), config)
        side = common_sidecar(unit, dict(h5.attrs), config)
        depth = layers_per_stream(h5)
        for stream, layer, grp, _ in bnstore.layers(h5):
            written += _layer_maps(folder, ents, model, stream, layer, grp, mask, side)
            rows.append(_neuron_rows(str(h5.attrs["model"]), stream, layer, grp, mask,
                                     config.model.an_kind))
            count = grp["bn_count"][()]
            counts[stream] = counts.get(stream, 0) + count
            bns = bnstore.read_layer(grp)  # this layer's BNs only
            maps[(stream, layer)] = bns.union(len(count))
            if stored:
                enriched.append(read_enrichment(known, stream, layer))
            elif masks is not None:  # BH across the layer's ANs x networks: a layer at a time
                enriched.append(_enrichment(bns, masks, config))
            del bns
        table = pd.concat(rows, ignore_index=True)
        nets = network_table(table, enriched, config) if masks is not None else None
        side["Networks"] = networks[1].get("Networks", "")
        if nets is not None:
            table["drives"] = nets["drives"]
            written += _networks_table(folder, ents, model, nets, dict(side, **networks[1]))
        written += write_redundancy_maps(folder, ents, model, counts, mask, side)
        written += write_layer_summaries(folder, ents, model, table, maps, bn_rows(h5), nets,
                                         counts, side, config.model.seed)
        written += _neuron_table(folder, ents, model, table, dict(side, LayersPerStream=depth))
        written.append(_association_file(folder, ents, model, table, h5, ijk, mask, side,
                                         config))
    return written


def _enrichment(bns, masks, config) -> dict:
    """:func:`bids_vlm.analysis.layers.network_enrichment` of one layer's BNs (one BH
    family)."""
    an, vox, sign = bns.entries()
    return network_enrichment(an, vox, sign, bns.n_ans, masks, config, None)


def bn_rows(h5):
    """A function of (k,) AN rows (of all layers, in file order) that returns (an_index (e,),
    voxel_index (e,)) of their BNs, reading only the layers that hold them (each whole)."""
    def rows(ans):
        ans = np.unique(np.asarray(ans, np.int64))
        parts = []
        for _, _, group, offset in bnstore.layers(h5):
            bns = None
            n = bnstore.layer_size(group)
            local = ans[(ans >= offset) & (ans < offset + n)] - offset
            if len(local):
                bns = bnstore.read_layer(group)
                an, vox = bns.rows(local)
                parts.append((an + offset, vox))
            del bns
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return tuple(np.concatenate(x) for x in zip(*parts))
    return rows


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


def _neuron_rows(model, stream, layer, grp, mask, kind):
    n = len(grp["n_pos"])
    thr = grp["z_threshold"][()].astype(float)
    return pd.DataFrame({
        "an_id": [an_id(model, stream, layer, u, kind) for u in range(n)], "stream": stream,
        "layer": layer, "unit": np.arange(n), "n_bn_pos": grp["n_pos"][()],
        "n_bn_neg": grp["n_neg"][()], "peak_r": grp["peak_r"][()],
        **peak_columns(mask, grp["peak_voxel"][()]),
        "z_threshold": np.where(np.isfinite(thr), thr, np.nan),
        "p_selection": _column(grp, "p_an", n),
        "removed_share": _column(grp, "removed_share", n),
        "mean_abs_r_layer": _column(grp, "mean_abs_r", n)})


def _column(grp, name, n):
    """(n,) a per-AN array of the association's layer group, NaN when it was not computed."""
    return grp[name][()] if name in grp else np.full(n, np.nan)


def network_table(table, enriched: list, config):
    """Per-AN network table (rows of ``table``) from the layers' enrichment results
    (``enriched``: one {network: {column: (n_layer,)}} per layer, in the table's order)."""
    atlases = load_networks(config.networks.atlas)
    columns = {"an_id": table["an_id"], "stream": table["stream"], "layer": table["layer"]}
    names = list(enriched[0]) if enriched else []
    drives = {}
    for name in names:
        for key in ("n_pos", "n_neg", "frac", "p_hypergeom", "p", "q"):
            columns[f"{key}_{name}"] = np.concatenate([res[name][key] for res in enriched])
        drives[name] = np.concatenate([res[name]["drives"] for res in enriched])
    out = pd.DataFrame(columns)  # at once: parcellations have hundreds of networks
    out["drives"] = [";".join(n for n in names if drives[n][i]) or "n/a"
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


GRAYORDINATE_COLUMNS = ("peak_grayordinate", "peak_structure", "peak_vertex")


def _neuron_table(folder, ents, model, table, side):
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "neurons", ".tsv")
    sidecar = {col: {"Description": text} for col, text in NEURON_COLUMNS.items()
               if col in table or col not in GRAYORDINATE_COLUMNS}
    sidecar["Model"] = model
    sidecar.update(side)
    return [write_tsv(path, table), write_json(path.with_suffix(".json"), sidecar)]


def _grid_attrs(mask) -> dict:
    """grid_shape and affine of the voxels (of the subcortical volume on grayordinates)."""
    if not is_grayordinates(mask):
        return {"grid_shape": list(mask.shape[:3]), "affine": np.asarray(mask.affine)}
    bm = brain_models(mask)
    if bm.volume_shape is None:
        return {"grid_shape": [0, 0, 0], "affine": np.eye(4)}
    return {"grid_shape": list(bm.volume_shape), "affine": np.asarray(bm.affine)}


def _association_file(folder, ents, model, table, h5, ijk, mask, side, config):
    """``_association.h5``: an_id (N,), voxel_ijk (V, 3) and the work file's layer groups in
    the compact form, copied a layer at a time as stored (still compressed)."""
    path = folder / bids_name(dict(ents, desc=desc_label(model)), "association", ".h5")
    keep = int(getattr(config.stats, "keep_entries", 100))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            ids = table["an_id"].to_numpy(str).astype(h5py.string_dtype())
            out.create_dataset("an_id", data=ids, compression="gzip" if len(ids) else None)
            out.create_dataset("voxel_ijk", data=np.asarray(ijk),
                               compression="gzip" if len(ijk) else None)
            if is_grayordinates(mask):
                out.create_dataset("grayordinate_key", data=row_keys(mask), compression="gzip")
            for stream, _, group, offset in bnstore.layers(h5):
                dest = out.create_group(f"{stream}/{group.name.rsplit('/', 1)[1]}")
                bnstore.copy_layer(group, dest)
                dest.attrs["an_offset"] = offset
                dest.attrs["n_ans"] = bnstore.layer_size(group)
                keep = int(dest.attrs["keep_entries"])
            out.attrs.update({
                "model": model, "method": side["AssociationMethod"], "fdr_q": side["FDRLevel"],
                **_grid_attrs(mask),
                "keep_entries": keep,
                "layout": "an_id (N,): the model's ANs (rows of the neuron table); voxel_ijk "
                          "(V, 3): the in-mask voxels; " + bnstore.LAYOUT})
    return path
