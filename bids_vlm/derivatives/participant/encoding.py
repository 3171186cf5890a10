"""The layer-wise encoding's derivatives of one analysis unit: held-out r and R^2 maps per
layer, the preferred-layer map and the layer table per stream, the banded models' split R^2,
the noise ceiling's fractions, and the hierarchy table."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from bids_vlm.derivatives.io import write_json, write_map, write_tsv
from bids_vlm.names import bids_name, desc_label, label
from bids_vlm.encoding.noise_ceiling import fraction_of_ceiling
from bids_vlm.encoding.ridge import preferred_description, preferred_layer

from bids_vlm.derivatives.participant.common import common_sidecar, output_model_name
from bids_vlm.derivatives.participant.networks import layer_count, write_hierarchy


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
    with h5py.File(enc_file, "r") as h5:
        if "skipped" in h5.attrs:
            return []
        model = output_model_name(str(h5.attrs["model"]), config)
        side = {"Sources": unit.sources, "BOLDInput": common_sidecar(
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
                          "banded ridge across streams (himalaya's MultipleKernelRidgeCV "
                          "model: a random search over band weights on the streams' linear "
                          "kernels, solved by bids_vlm.encoding.banded) at the layer indices "
                          "--banded-layers selects: median held-out R^2 and each stream's "
                          "median share")))]

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
