"""What a participant's derivatives share: the neuron table's columns, the entities and folder
of an analysis unit, the model's name in the outputs, the sidecars' common fields, and a
model's layers per stream."""
from __future__ import annotations

import json
from pathlib import Path

from bids_vlm.inputs.units import AnalysisUnit


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
    "peak_grayordinate": "grayordinate (row of the CIFTI brain models) of peak_r",
    "peak_structure": "CIFTI brain structure of peak_r (e.g. CORTEX_LEFT, THALAMUS_RIGHT)",
    "peak_vertex": "surface vertex of peak_r on its structure's mesh (-1: a subcortical voxel, "
                   "placed by peak_i, peak_j, peak_k; those are -1 for a vertex)",
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

def func_dir(output_dir, unit: AnalysisUnit) -> Path:
    """The unit's ``sub-<label>[/ses-<label>]/func`` folder below ``output_dir``."""
    path = Path(output_dir) / f"sub-{unit.subject}"
    if unit.session:
        path = path / f"ses-{unit.session}"
    return path / "func"


def common_sidecar(unit: AnalysisUnit, attrs: dict, config) -> dict:
    """The sidecar fields every association map of ``unit`` has; attrs: the association's
    HDF5 attributes (``method``, ``fdr_q``)."""
    preproc = ("preprocessed BOLD from the derivatives (desc-preproc)" if unit.preprocessed
               else "none: raw BOLD (no motion correction, slice timing or normalisation by "
                    "bids_vlm); masked, detrended, high-pass filtered and z-scored per run")
    extra = {"StimulusTimeline": unit.timeline} if unit.timeline else {}
    return {"Sources": unit.sources, "BOLDInput": preproc, **extra,
            "AssociationMethod": attrs["method"], "FDRLevel": float(attrs["fdr_q"]),
            "HRFModel": config.stats.hrf_model, "StimulusRate": config.stimuli.stim_rate,
            "Pooling": config.model.pooling, "ANDefinition": AN_DEFINITIONS[config.model.an_kind]}

def layers_per_stream(h5) -> dict:
    """{stream: layers of the stream in the model} of an association file: its ``n_layers``
    attribute, else the model registry, else one more than the last analysed layer."""
    stored = json.loads(h5.attrs.get("n_layers", "{}"))
    if all(s in stored for s in h5):
        return {s: int(stored[s]) for s in h5}
    # local import: loads torch; only for results without stored layer counts
    from bids_vlm.models import REGISTRY

    known = REGISTRY.get(str(h5.attrs["model"]))
    return {s: int(known.streams[s][0]) if known and s in known.streams
            else max(int(k) for k in h5[s]) + 1 for s in h5}
