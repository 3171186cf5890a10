"""The layer-wise encoding of one model in an analysis unit (the encoding stage): the
leave-one-run-out ridge of every layer, the noise ceiling when runs repeat stimuli, and the
banded ridge across streams, into one HDF5 file."""
from __future__ import annotations

import logging

import h5py
import numpy as np
import torch

from bids_vlm.design.cleaned_runs import load_cleaned, pooled_noise_sums
from bids_vlm.encoding import noise_ceiling as nc
from bids_vlm.encoding.banded import banded_layer_keys, encode_banded
from bids_vlm.encoding.ridge import (encode_layer, method_description, null_terms,
                                     z_description)
from bids_vlm.models.base import resolve_device
from bids_vlm.stats.autocorr import default_lags

LOGGER = logging.getLogger("bids_vlm")


def skip_reason(config, run_lengths) -> str:
    """Why the encoding does not run ("" when it does): --no-encoding, or fewer than 2 runs
    (no leave-one-run-out)."""
    if not config.encoding.enabled:
        return "disabled (--no-encoding)"
    return "" if len(run_lengths) >= 2 else "needs at least 2 runs for leave-one-run-out"


def encode_layers(regressors_file, cleaned_files, config, device, path) -> str:
    """Leave-one-run-out ridge encoding of every layer of ``regressors_file`` (the regressors
    stage's) -> ``path`` (HDF5: a group per layer with held-out r, R^2, alpha and the held-out
    r's z per voxel; ``noise_ceiling``; ``banded/<layer>``; attribute ``skipped`` when it
    cannot run), on ``device`` ("auto", "cpu", "cuda")."""
    with h5py.File(regressors_file, "r") as regs, h5py.File(path, "w") as out:
        out.attrs["model"] = regs.attrs["model"]
        run_lengths = [int(n) for n in regs.attrs["run_lengths"]]
        skipped = skip_reason(config, run_lengths)
        if skipped:
            out.attrs["skipped"] = skipped
            LOGGER.warning("layer-wise encoding skipped: %s", skipped)
            return str(path)
        voxels = load_cleaned(cleaned_files)
        device = resolve_device(device)
        backend = "torch_cuda" if device.type == "cuda" else "torch"
        # on a GPU the BOLD is copied there once for all layers
        targets = (torch.from_numpy(voxels.astype(np.float32, copy=False)).to(device)
                   if device.type == "cuda" else voxels)
        out.attrs["method"] = method_description(config.encoding.alphas, config.encoding.alpha_cv)
        out.attrs["z_method"] = z_description()
        n_lags = config.stats.n_lags or default_lags(run_lengths)
        null = dict(with_z=True, n_lags=n_lags, null=null_terms(  # as the association's
            voxels, run_lengths, n_lags, pooled_noise_sums(cleaned_files),
            regs.attrs["lag_traces"]))
        for stream in (s for s in regs if s not in ("delayed", "nuisance")):
            for layer in regs[stream]:
                key = f"{stream}/{layer}"
                features = regs[f"delayed/{key}"] if f"delayed/{key}" in regs else regs[key]
                res = encode_layer(features[()], targets, run_lengths,
                                   alphas=np.asarray(config.encoding.alphas), backend=backend,
                                   max_inner_folds=config.encoding.max_inner_folds,
                                   alpha_cv=config.encoding.alpha_cv, progress=True,
                                   desc=f"encoding {key}", **null)
                for field in ("r", "r2", "alpha", "z"):
                    out[f"{stream}/{layer}/{field}"] = getattr(res, field)
        del targets  # the GPU's copy
        ceiling = nc.ceiling_from_signatures(list(regs.attrs["run_signatures"]), voxels,
                                             run_lengths)
        if ceiling is not None:  # runs repeating the same stimuli
            out["noise_ceiling/r"], out["noise_ceiling/ncsnr"] = ceiling.r, ceiling.ncsnr
            out["noise_ceiling"].attrs["method"] = nc.method_description(ceiling)
        if config.encoding.banded_layers != ("none",):
            _banded(regs, voxels, run_lengths, config, backend, out)
    return str(path)


def _banded(regs, voxels, run_lengths, config, backend, out):
    """Banded ridge across the streams at the layer indices they share that
    ``--banded-layers`` selects -> ``banded/<layer>``."""
    streams = [s for s in regs if s not in ("delayed", "nuisance")]
    shared = sorted(set.intersection(*(set(regs[s]) for s in streams))) if streams else []
    if len(streams) < 2:
        return
    for layer in banded_layer_keys(shared, config.encoding.banded_layers):
        bands = {s: regs[f"delayed/{s}/{layer}" if "delayed" in regs else f"{s}/{layer}"][()]
                 for s in streams}
        res = encode_banded(bands, voxels, run_lengths, alphas=np.asarray(config.encoding.alphas),
                            backend=backend, n_iter=config.encoding.banded_iterations,
                            max_inner_folds=config.encoding.max_inner_folds,
                            seed=config.model.seed)
        out[f"banded/{layer}/r"], out[f"banded/{layer}/r2"] = res.r, res.r2
        for name, value in res.split_r2.items():
            out[f"banded/{layer}/split_{name}"] = value
