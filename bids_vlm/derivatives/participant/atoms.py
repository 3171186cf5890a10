"""Derivatives of paper mode: each layer's atom t-maps (4D), an atom table with the AN
sub-groups, and the atoms and loadings (HDF5)."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from bids_vlm.derivatives.io import write_json, write_map, write_sparse, write_tsv
from bids_vlm.names import bids_name, desc_label, an_id
from bids_vlm.derivatives.participant.common import output_model_name

ATOM_COLUMNS = {
    "stream": "image, text, cross-image or cross-text", "layer": "layer index",
    "atom": "atom index within the layer",
    "n_ans": "size of the atom's AN sub-group (ANs with a non-zero loading on it)",
    "n_voxels": "voxels whose atom t passes Benjamini-Hochberg FDR at the FDR level",
    "peak_t": "largest |t| of the atom (signed)",
    "top_ans": "the (up to 5) ANs with the largest |loading|, by AN id",
}


def write_atom_outputs(atom_file, folder, ents, mask, ijk, unit, config) -> list:
    written, rows, store = [], [], {}
    with h5py.File(atom_file, "r") as h5:
        raw_model = str(h5.attrs["model"])
        model = output_model_name(raw_model, config)
        side = {"Sources": unit.sources, "Model": model, "HRFModel": config.stats.hrf_model,
                "PaperMode": (f"sparse dictionary learning (scikit-learn "
                              f"MiniBatchDictionaryLearning), K = {config.stats.n_atoms}, "
                              f"alpha = {config.stats.atom_alpha}, AN time series centred and "
                              f"unit norm; atoms HRF-convolved; OLS per voxel with an intercept, "
                              f"t with {int(h5.attrs['df'])} df (frames independent); BH per "
                              f"atom across voxels, q = {config.stats.fdr_q}")}
        for stream in h5:
            for layer in h5[stream]:
                grp = h5[f"{stream}/{layer}"]
                t, q, loadings = grp["t"][()], grp["q"][()], grp["loadings"][()]
                ids = [an_id(raw_model, stream, int(layer), u, config.model.an_kind)
                       for u in range(loadings.shape[0])]
                path = folder / bids_name(dict(ents, desc=desc_label(model, stream, int(layer)),
                                               stat="atomt"), "statmap", ".nii.gz")
                written.append(write_map(path, t, mask, dict(
                    side, Stream=stream, Layer=int(layer), Units="t",
                    Description="t of each atom (4th dimension) in the OLS fit of the layer's "
                                "atom regressors to the voxel")))
                rows += _atom_rows(stream, int(layer), t, q, loadings, ids, config.stats.fdr_q)
                store[f"{stream}__{layer}__loadings"] = loadings.ravel()
                store[f"{stream}__{layer}__atoms"] = grp["atoms"][()].ravel()
                store[f"{stream}__{layer}__shape"] = np.array([*loadings.shape,
                                                               grp["atoms"].shape[0]])
    table = folder / bids_name(dict(ents, desc=desc_label(model)), "atoms", ".tsv")
    sidecar = {c: {"Description": d} for c, d in ATOM_COLUMNS.items()}
    sidecar.update(side)
    h5_path = folder / bids_name(dict(ents, desc=desc_label(model)), "atoms", ".h5")
    return written + [
        write_tsv(table, pd.DataFrame(rows)), write_json(table.with_suffix(".json"), sidecar),
        write_sparse(h5_path, store, {"layout": "<stream>__<layer>__loadings: (ANs x K) and "
                                                "__atoms: (samples x K), flattened row-major; "
                                                "__shape: (ANs, K, samples)",
                                      "model": model})]


def _atom_rows(stream, layer, t, q, loadings, ids, fdr_q):
    rows = []
    for k in range(t.shape[0]):
        weights = np.abs(loadings[:, k])
        top = np.argsort(weights)[::-1][:5]
        peak = int(np.abs(t[k]).argmax()) if t.shape[1] else 0
        rows.append({"stream": stream, "layer": layer, "atom": k,
                     "n_ans": int((weights > 1e-8).sum()),
                     "n_voxels": int((q[k] <= fdr_q).sum()),
                     "peak_t": float(t[k, peak]) if t.shape[1] else np.nan,
                     "top_ans": ";".join(ids[i] for i in top if weights[i] > 1e-8) or "n/a"})
    return rows
