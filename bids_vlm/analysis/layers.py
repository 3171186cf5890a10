"""The network analyses of every layer of one model, from the stage files: the network enrichment
(:func:`write_enrichment`, with its spatial null: computed once, read by the lesion and the
networks table) and the virtual lesion (:func:`compute_lesion`, the refits on ``device``), as
:mod:`bids_vlm.stats.layers` runs the association and :mod:`bids_vlm.encoding.layers` the
encoding of every layer."""
from __future__ import annotations

import json

import h5py
import numpy as np

from bids_vlm import brainmask
from bids_vlm.analysis.atlases import space_description
from bids_vlm.analysis.lesion import FoldAssociation, network_lesions
from bids_vlm.analysis.networks import data_networks, enrichment
from bids_vlm.design.cleaned_runs import load_cleaned, noise_path
from bids_vlm.models.base import resolve_device
from bids_vlm.stats.bnstore import layers, read_layer


ENRICHMENT_FIELDS = ("n_pos", "n_neg", "frac", "p_hypergeom", "p", "n_null", "q", "drives")


def write_enrichment(association_file, mask_file, unit, config, path) -> str:
    """The network enrichment of every layer of one model's association (its spatial null is
    the costly part), computed once for the lesion and the tables -> ``path`` (HDF5): attribute
    ``networks`` (JSON list), per layer ``<stream>/<layer>/<field>`` (N_layer, M) arrays of
    :func:`bids_vlm.analysis.networks.enrichment`'s fields (:data:`ENRICHMENT_FIELDS`), or
    attribute ``skipped`` (why: no atlas fits the data)."""
    masks, _, problem = data_networks(config.networks.atlas, brainmask.load(mask_file),
                                      unit.space)
    with h5py.File(association_file, "r") as assoc, h5py.File(path, "w") as out:
        if problem:
            out.attrs["skipped"] = problem
            return str(path)
        out.attrs["networks"] = json.dumps(list(masks))
        for stream, layer, group, _ in layers(assoc):  # one layer's BNs at a time
            bns = read_layer(group)
            an, vox, sign = bns.entries()
            store_enrichment(out, f"{stream}/{layer}",
                             network_enrichment(an, vox, sign, bns.n_ans, masks, config, None))
    return str(path)


def store_enrichment(h5, key: str, result: dict) -> None:
    """One layer's :func:`network_enrichment` result under ``key`` of an open
    :func:`write_enrichment` file (networks in the order of its ``networks`` attribute)."""
    names = json.loads(h5.attrs["networks"])
    for field in ENRICHMENT_FIELDS:
        h5[f"{key}/{field}"] = np.stack([result[n][field] for n in names], axis=1)


def read_enrichment(h5, stream: str, layer: str) -> dict:
    """{network: {field: (N,)}} of one layer from an open :func:`write_enrichment` file."""
    names = json.loads(h5.attrs["networks"])
    arrays = {f: h5[f"{stream}/{layer}/{f}"][()] for f in ENRICHMENT_FIELDS}
    return {name: {f: arrays[f][:, m] for f in ENRICHMENT_FIELDS}
            for m, name in enumerate(names)}


def network_enrichment(an_index, voxel_index, r, n_an: int, masks, config, groups) -> dict:
    """:func:`bids_vlm.analysis.networks.enrichment` with the configuration's FDR level and
    spatial null; r: (E,) r or only its sign; groups: (N,) the BH family (layer) of each AN,
    None: one family (the ANs of one layer)."""
    net = config.networks
    return enrichment(np.asarray(an_index, np.int64), np.asarray(voxel_index, np.int64), r,
                      n_an, masks, config.stats.fdr_q, groups=groups,
                      n_surrogates=net.n_surrogates, max_surrogates=net.max_surrogates,
                      seed=net.seed)


def compute_lesion(regressors_file, cleaned_files, association_file, encoding_file, mask_file,
                   unit, config, enrichment_file, device="auto") -> dict:
    """The virtual lesion of one model: {"model", "rows" (records of the lesion table),
    "skipped" (why it did not run, or ""), "note", "fields" (atlas and spaces)};
    enrichment_file: :func:`write_enrichment`'s of the association (which networks are
    driven); device: where its refits run ("auto", "cpu", "cuda")."""
    masks, atlases, problem = data_networks(config.networks.atlas, brainmask.load(mask_file),
                                            unit.space)
    fields = space_description(atlases, unit.space)
    with h5py.File(association_file, "r") as assoc, h5py.File(encoding_file, "r") as enc, \
            h5py.File(regressors_file, "r") as regs:
        out = {"model": str(assoc.attrs["model"]), "rows": [], "fields": fields, "note": "",
               "skipped": ""}
        if problem or "skipped" in enc.attrs or not config.networks.lesion_steps:
            out["skipped"] = problem or str(enc.attrs.get("skipped", "no lesion steps"))
            return out
        names = {(s, int(k)): f"{s}/{k}" for s in assoc for k in assoc[s]}
        with h5py.File(enrichment_file, "r") as enriched:
            driven = _driven(enriched, masks)
        scores = {key: enc[f"{n}/r"][()] for key, n in names.items()}
        features = {key: regs[f"delayed/{n}"] if f"delayed/{n}" in regs else regs[n]
                    for key, n in names.items()}
        voxels = load_cleaned(cleaned_files)
        device = resolve_device(device)
        stats = config.stats
        settings = FoldAssociation(stats.bn_definition, stats.nuisance_pcs, stats.autocorr,
                                   stats.n_lags or None, stats.fdr_q, stats.fdr_scope,
                                   str(device))
        noise = {"run_removed": regs.attrs["run_removed"]}
        if stats.autocorr == "exact":
            noise.update(run_noise=[np.load(noise_path(f)) for f in cleaned_files],
                         run_traces=regs.attrs["run_lag_traces"])
        presence = {s: regs[f"nuisance/presence/{s}"][()] for s in {k[0] for k in names}
                    if f"nuisance/presence/{s}" in regs and stats.bn_definition == "unique"}
        table = network_lesions(features, {key: regs[n] for key, n in names.items()}, scores,
                                voxels, [int(n) for n in regs.attrs["run_lengths"]], masks,
                                config.networks.lesion_steps, driven, seed=config.model.seed,
                                settings=settings, presence=presence, noise=noise,
                                alphas=np.asarray(config.encoding.alphas),
                                backend="torch_cuda" if device.type == "cuda" else "torch",
                                max_inner_folds=config.encoding.max_inner_folds)
    out["rows"] = json.loads(table.to_json(orient="records"))
    if table.empty:
        out["note"] = "no network is driven by an AN of any stream"
    return out


def _driven(enriched, masks) -> dict:
    """{network: streams with at least one AN that drives it} (enrichment as in the networks
    table: every AN of the model, BH across the ANs x networks of each layer), from an open
    :func:`write_enrichment` file."""
    out = {name: set() for name in masks}
    for stream in enriched:
        for layer in enriched[stream]:
            drives = enriched[f"{stream}/{layer}/drives"][()]  # (N, M)
            for m, name in enumerate(json.loads(enriched.attrs["networks"])):
                if drives[:, m].any():
                    out[name].add(stream)
    return out
