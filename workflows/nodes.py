"""The functions that Nipype nodes run: read inputs, call one stage function, write outputs.

They are wrapped in ``nipype.interfaces.utility.Function``, which runs a function from its
source text, so every import is inside the function. Outputs go to the node's own directory
(the current directory when the node runs). Small inputs travel as JSON strings; every node
gets the configuration and the runs (whose fingerprints change when input files change), so a
change of either invalidates the cache.
"""


def timelines_node(runs_json, bids_dir, config_json):
    """Stimulus timelines of every run -> ``timelines.json`` ({run label: timeline})."""
    import json
    import os
    from pathlib import Path

    from bids_vlm.inputs.bids import run_from_dict
    from bids_vlm.config import from_json
    from bids_vlm.inputs.stimuli import build_timeline, read_events

    config = from_json(config_json)
    out = {}
    for data in json.loads(runs_json):
        run = run_from_dict(data)
        timeline = build_timeline(read_events(run.events), run.n_scans * run.tr, config.stimuli,
                                  Path(bids_dir) / "stimuli", source=run.events)
        out[run.label] = timeline.to_dict()
    path = os.path.abspath("timelines.json")
    Path(path).write_text(json.dumps(out))
    return path


def mask_node(runs_json):
    """The analysis mask: the intersection of the runs' brain masks -> ``mask.nii.gz``; for
    CIFTI runs their grayordinates -> ``mask.dscalar.nii``."""
    import json
    import os

    import nibabel as nib
    from nilearn.masking import intersect_masks

    from bids_vlm.inputs.bids import run_from_dict
    from bids_vlm.brainmask import grayordinate_mask
    from bids_vlm.cifti import is_cifti
    from bids_vlm.errors import DataError
    from bids_vlm.design.cleaning import load_mask

    runs = [run_from_dict(d) for d in json.loads(runs_json)]
    if any(is_cifti(r.bold) for r in runs):
        path = os.path.abspath("mask.dscalar.nii")
        nib.save(grayordinate_mask(runs), path)
        return path
    masks = [load_mask(r.bold, r.mask) for r in runs]
    ref = masks[0]
    for run, mask in zip(runs, masks):
        if mask.shape != ref.shape or abs(mask.affine - ref.affine).max() > 1e-3:
            raise DataError(f"the runs of {runs[0].label.split('_run-')[0]} are not on one grid "
                            f"(first run {ref.shape}, this run {mask.shape})", run.bold)
    mask = intersect_masks(masks, threshold=1.0, connected=False) if len(masks) > 1 else ref
    path = os.path.abspath("mask.nii.gz")
    nib.save(mask, path)
    return path


def clean_node(run_json, mask_file, config_json):
    """Cleaned BOLD of one run -> ``<run>_cleaned.npy`` (n_scans, n_voxels), and beside it
    ``<run>_noise.npy``, the lag sums of the uncleaned detrended series (lags + 1, n_voxels)
    for the association's exact null variance."""
    import json
    import os

    import numpy as np

    from bids_vlm.inputs.bids import run_from_dict
    from bids_vlm.config import from_json
    from bids_vlm.design.cleaning import (censored_frames, clean_signals, load_bold, noise_lag_sums,
                                  noise_path, read_confounds, run_lags)

    run = run_from_dict(json.loads(run_json))
    config = from_json(config_json)
    data = load_bold(run.bold, mask_file, config.bold)
    confounds = read_confounds(run.confounds, data.shape[0], config.bold)
    path = os.path.abspath(f"{run.label}_cleaned.npy")
    np.save(noise_path(path), noise_lag_sums(data, run_lags(run.n_scans, config.stats.n_lags),
                                             censored_frames(run.confounds, data.shape[0])))
    np.save(path, clean_signals(data, run.tr, confounds, config.bold))
    return path


def save_cleaned_node(cleaned_files, timelines_file, mask_file, runs_json, unit_json,
                      output_dir):
    """With ``--save-cleaned``: every run's cleaned BOLD as a derivative
    (``desc-cleaned_bold.nii.gz``, its stimulus-sequence signature in the sidecar), for the
    group level's across-subjects noise ceiling; returns the written paths."""
    import json

    from bids_vlm.inputs.bids import run_from_dict
    from bids_vlm.derivatives.participant.cleaned import write_cleaned

    runs = [run_from_dict(d) for d in json.loads(runs_json)]
    timelines = json.loads(open(timelines_file).read())
    return [str(p) for p in write_cleaned(cleaned_files, runs, timelines, mask_file,
                                          json.loads(unit_json), output_dir)]


def extract_node(timelines_file, model_name, config_json, cache_dir, execution_dir=""):
    """AN activations of every unique stimulus -> ``activations.h5``, through the activation
    cache in ``cache_dir`` (stimuli already there are not run through the model again), on
    the device and in the batches of ``execution_dir`` (:func:`bids_vlm.config.read_execution`).

    Datasets ``<stream>/<layer>`` (n_items, units) and ``items/<stream>`` (n_items,) strings.
    """
    import json
    import os

    import h5py

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.models import extract_cached, load_model
    from bids_vlm.inputs.stimuli import Timeline, unique_items

    config, execution = from_json(config_json), read_execution(execution_dir)
    timelines = [Timeline.from_dict(t) for t in json.loads(open(timelines_file).read()).values()]
    model = load_model(model_name, config.model)
    items = {s: unique_items(timelines, s) for s in model.streams
             if not config.model.streams or s in config.model.streams}
    acts, computed = extract_cached(model, items, config.model, cache_dir,
                                    device=execution.device, batch_size=execution.batch_size)
    path = os.path.abspath("activations.h5")
    with h5py.File(path, "w") as h5:
        for key, value in acts.items():
            h5[key] = value
        for stream, values in items.items():
            h5.create_dataset(f"items/{stream}", data=values, dtype=h5py.string_dtype())
        h5.attrs["model"] = model_name
        h5.attrs["computed"] = computed
        h5.attrs["units"] = json.dumps({s: v.units for s, v in model.streams.items()})
        h5.attrs["n_layers"] = json.dumps({s: v.n_layers for s, v in model.streams.items()})
    return path


def regressors_node(timelines_file, activations_file, runs_json, config_json):
    """HRF regressors of every AN, runs concatenated -> ``regressors.h5``
    (``<stream>/<layer>``: (n_frames_total, units)), each run's cleaned like its BOLD
    (confounds, detrend, high-pass; :func:`bids_vlm.design.cleaning.clean_signals`) and z-scored."""
    import json
    import os

    import h5py
    import numpy as np

    from bids_vlm.inputs.bids import run_from_dict
    from bids_vlm.config import from_json
    from bids_vlm.stats.autocorr import default_lags
    from bids_vlm.encoding.noise_ceiling import run_signature
    from bids_vlm.design.cleaning import cleaning_projection, clean_signals, lag_traces, read_confounds
    from bids_vlm.design.regressors import (
        convolution_matrix,
        frame_times,
        make_delayed_regressors,
        make_regressors,
        sample_activations,
    )
    from bids_vlm.inputs.stimuli import Timeline, sample_items

    def presence(tl, stream):  # (n_samples, 1): 1 where the stream shows a stimulus
        return np.array([[x is not None] for x in sample_items(tl, stream)], np.float32)

    config = from_json(config_json)
    timelines = json.loads(open(timelines_file).read())
    runs = [run_from_dict(d) for d in json.loads(runs_json)]
    path = os.path.abspath("regressors.h5")
    with h5py.File(activations_file, "r") as acts, h5py.File(path, "w") as out:
        index = {s: {k: i for i, k in enumerate(acts[f"items/{s}"].asstr()[()])}
                 for s in acts["items"]}
        per_run, removed, traces = [], [], []
        n_lags = config.stats.n_lags or default_lags([r.n_scans for r in runs])
        for run in runs:
            tl = Timeline.from_dict(timelines[run.label])
            frames = frame_times(run.n_scans, run.tr, run.slice_time_ref)
            matrix = convolution_matrix(tl.times, tl.dt, frames, config.stats.hrf_model,
                                        config.stats.oversampling, config.stats.fir_delays)
            confounds = read_confounds(run.confounds, run.n_scans, config.bold)
            projection = cleaning_projection(run.n_scans, run.tr, confounds, config.bold)
            removed.append(int(round(run.n_scans - np.trace(projection))))
            traces.append(lag_traces(projection, n_lags))
            per_run.append((tl, matrix, lambda x, r=run, c=confounds:
                            clean_signals(x, r.tr, c, config.bold)))
        for stream in (s for s in acts if s != "items"):
            out[f"nuisance/presence/{stream}"] = np.concatenate(  # any stimulus of the stream
                [clean(make_regressors(m, presence(tl, stream))) for tl, m, clean in per_run])
            for layer in acts[stream]:
                table = acts[f"{stream}/{layer}"][()]
                samples = [sample_activations(sample_items(tl, stream), table, index[stream])
                           for tl, _, _ in per_run]
                out[f"{stream}/{layer}"] = np.concatenate(
                    [clean(make_regressors(m, s)) for (_, m, clean), s in zip(per_run, samples)])
                if config.stats.hrf_model == "fir":  # delayed copies for the encoding models
                    out[f"delayed/{stream}/{layer}"] = np.concatenate(
                        [clean(make_delayed_regressors(m, s))
                         for (_, m, clean), s in zip(per_run, samples)])
        out.attrs["model"] = acts.attrs["model"]
        out.attrs["n_layers"] = acts.attrs.get("n_layers", "{}")
        out.attrs["run_lengths"] = [r.n_scans for r in runs]
        out.attrs["n_removed"] = sum(removed)  # dimensions the cleaning projected out
        out.attrs["run_removed"] = removed  # the same per run, and the lag traces
        out.attrs["lag_traces"] = np.sum(traces, 0)  # sum_t M[t, t+k] of the projections
        out.attrs["run_lag_traces"] = np.array(traces)  # (n_runs, K + 1)
        out.attrs["run_signatures"] = [  # equal for runs showing the same stimulus sequence
            run_signature(timelines[r.label], r.n_scans, r.tr) for r in runs]
    return path


def associate_node(regressors_file, cleaned_files, config_json, execution_dir=""):
    """AN x voxel association of every layer -> ``association.h5`` (one group per layer), with
    the device, block size and memory of ``execution_dir``."""
    import os

    import h5py
    import numpy as np

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.derivatives.bnstore import ENTRY_FIELDS, pack, write_layer
    from bids_vlm.stats import method_description, prepare_voxels
    from bids_vlm.stats.association import TILE, TILE_CUDA, block_size_for_memory
    from bids_vlm.stats.unique import layer_association, mean_abs_r
    from bids_vlm.errors import ResourceError
    from bids_vlm.models.base import resolve_device
    from bids_vlm.design.cleaning import pooled_noise_sums

    config, execution = from_json(config_json), read_execution(execution_dir)
    voxels = np.concatenate([np.load(f) for f in cleaned_files], axis=0)
    device = resolve_device(execution.device)
    path = os.path.abspath("association.h5")
    with h5py.File(regressors_file, "r") as regs, h5py.File(path, "w") as out:
        out.attrs["model"] = regs.attrs["model"]
        out.attrs["n_layers"] = regs.attrs.get("n_layers", "{}")
        stats = config.stats
        out.attrs["method"] = method_description(stats.autocorr, stats.n_lags or None,
                                                 stats.fdr_scope, stats.bn_definition,
                                                 stats.nuisance_pcs)
        out.attrs["fdr_q"] = stats.fdr_q
        run_lengths = [int(n) for n in regs.attrs["run_lengths"]]
        common = dict(run_lengths=run_lengths, autocorr=stats.autocorr,
                      n_lags=stats.n_lags or None, n_removed=int(regs.attrs.get("n_removed", 0)))
        noise = dict(noise_sums=pooled_noise_sums(cleaned_files),
                     lag_traces=regs.attrs["lag_traces"]) if stats.autocorr == "exact" else {}
        prepared = prepare_voxels(voxels, device=str(device), **common, **noise)  # all layers
        del voxels  # the prepared copy is all the layers need
        for stream in (s for s in regs if s not in ("delayed", "nuisance")):
            presence = regs.get(f"nuisance/presence/{stream}")
            presence = None if presence is None else presence[()]
            for layer in regs[stream]:
                key = f"{stream}/{layer}"
                x = regs[key][()]
                out[f"{key}/mean_abs_r"] = mean_abs_r(x, seed=config.model.seed)
                block = execution.block_size
                if execution.mem_gb:
                    try:
                        spare = prepared.y.numel() * 4 if stats.bn_definition == "unique" else 0
                        block = block_size_for_memory(  # (unique: a residualised voxel copy)
                            int(execution.mem_gb * 2**30) - spare, x.shape[0], x.shape[1],
                            prepared.n_vox,
                            tile=TILE if device.type == "cpu" else TILE_CUDA)
                    except MemoryError as exc:
                        raise ResourceError(str(exc)) from exc
                res, share = layer_association(
                    x, prepared, presence, stats.bn_definition, stats.nuisance_pcs, **noise,
                    q=stats.fdr_q, block_size=block, device=str(device), progress=True,
                    desc=f"association {key}", fdr_scope=stats.fdr_scope, **common)
                if share is not None:
                    out[f"{key}/removed_share"] = share
                for field, value in vars(res).items():  # per AN and per voxel
                    if field != "n_frames" and field not in ENTRY_FIELDS:
                        out[f"{key}/{field}"] = value
                # the entries in the compact form: BNs with the sign of r, and r, z, p of
                # each AN's top --keep-entries voxels (bids_vlm.derivatives.bnstore)
                write_layer(out[key], pack(*(getattr(res, f) for f in ENTRY_FIELDS),
                                           len(res.n_pos), stats.keep_entries))
                out[key].attrs["n_frames"] = res.n_frames
                del res
    return path


def encode_node(regressors_file, cleaned_files, config_json, execution_dir=""):
    """Leave-one-run-out ridge encoding of every layer -> ``encoding.h5`` (a group per layer
    with held-out r, R^2, alpha and the held-out r's z per voxel; attribute ``skipped`` when it
    cannot run)."""
    import logging
    import os

    import h5py
    import numpy as np
    import torch

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.encoding.ridge import encode_layer, method_description, z_description
    from bids_vlm.models.base import resolve_device
    from bids_vlm.design.cleaning import pooled_noise_sums

    config = from_json(config_json)
    path = os.path.abspath("encoding.h5")
    with h5py.File(regressors_file, "r") as regs, h5py.File(path, "w") as out:
        out.attrs["model"] = regs.attrs["model"]
        run_lengths = [int(n) for n in regs.attrs["run_lengths"]]
        if not config.encoding.enabled or len(run_lengths) < 2:
            out.attrs["skipped"] = ("disabled (--no-encoding)" if not config.encoding.enabled
                                    else "needs at least 2 runs for leave-one-run-out")
            logging.getLogger("bids_vlm").warning("layer-wise encoding skipped: %s",
                                                  out.attrs["skipped"])
            return path
        voxels = np.concatenate([np.load(f) for f in cleaned_files], axis=0)
        device = resolve_device(read_execution(execution_dir).device)
        backend = "torch_cuda" if device.type == "cuda" else "torch"
        # on a GPU the BOLD is copied there once for all layers
        targets = (torch.from_numpy(voxels.astype(np.float32, copy=False)).to(device)
                   if device.type == "cuda" else voxels)
        out.attrs["method"] = method_description(config.encoding.alphas)
        out.attrs["z_method"] = z_description()
        null = dict(with_z=True, noise_sums=pooled_noise_sums(cleaned_files),  # as association
                    lag_traces=regs.attrs["lag_traces"], n_lags=config.stats.n_lags or None)
        for stream in (s for s in regs if s not in ("delayed", "nuisance")):
            for layer in regs[stream]:
                key = f"{stream}/{layer}"
                features = regs[f"delayed/{key}"] if f"delayed/{key}" in regs else regs[key]
                res = encode_layer(features[()], targets, run_lengths,
                                   alphas=np.asarray(config.encoding.alphas), backend=backend,
                                   max_inner_folds=config.encoding.max_inner_folds,
                                   progress=True, desc=f"encoding {key}", **null)
                for field in ("r", "r2", "alpha", "z"):
                    out[f"{stream}/{layer}/{field}"] = getattr(res, field)
        del targets  # the GPU's copy
        from bids_vlm.encoding import noise_ceiling as nc

        ceiling = nc.ceiling_from_signatures(list(regs.attrs["run_signatures"]), voxels,
                                             run_lengths)
        if ceiling is not None:  # runs repeating the same stimuli
            out["noise_ceiling/r"], out["noise_ceiling/ncsnr"] = ceiling.r, ceiling.ncsnr
            out["noise_ceiling"].attrs["method"] = nc.method_description(ceiling)
        if config.encoding.banded_layers != ("none",):
            from workflows.nodes import _banded  # Function nodes run this function's source

            _banded(regs, voxels, run_lengths, config, backend, out)
    return path


def _banded(regs, voxels, run_lengths, config, backend, out):
    """Banded ridge across the streams at the layer indices they share that
    ``--banded-layers`` selects -> ``banded/<layer>``."""
    import numpy as np

    from bids_vlm.encoding.banded import banded_layer_keys, encode_banded

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


def enrich_node(association_file, mask_file, unit_json, config_json):
    """Network enrichment (with its spatial null) of every layer of one model's association ->
    ``enrichment.h5``, read by the lesion and the networks table."""
    import json
    import os

    from bids_vlm.config import from_json
    from bids_vlm.derivatives.participant.networks import write_enrichment

    return write_enrichment(association_file, mask_file, json.loads(unit_json),
                            from_json(config_json), os.path.abspath("enrichment.h5"))


def lesion_node(regressors_file, cleaned_files, association_file, encoding_file, mask_file,
                unit_json, config_json, enrichment_file, execution_dir=""):
    """Virtual lesion of every network driven by the model's ANs -> ``lesion.json`` (on the
    device of ``execution_dir``)."""
    import json
    import os
    from pathlib import Path

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.derivatives.participant.networks import compute_lesion

    result = compute_lesion(regressors_file, cleaned_files, association_file, encoding_file,
                            mask_file, json.loads(unit_json), from_json(config_json),
                            enrichment_file, device=read_execution(execution_dir).device)
    path = os.path.abspath("lesion.json")
    Path(path).write_text(json.dumps(result))
    return path


def atoms_node(timelines_file, activations_file, runs_json, cleaned_files, config_json):
    """Paper mode: atoms of every layer's AN time series, their HRF regressors fitted to every
    voxel -> ``atoms.h5`` (a group per layer: atoms, loadings, t, q; attribute df)."""
    import json
    import os

    import h5py
    import numpy as np

    from bids_vlm.inputs.bids import run_from_dict
    from bids_vlm.config import from_json
    from bids_vlm.encoding.atoms import atom_glm, learn_atoms
    from bids_vlm.stats.autocorr import default_lags
    from bids_vlm.design.cleaning import (cleaning_projection, clean_signals, lag_traces,
                                  pooled_noise_sums, read_confounds)
    from bids_vlm.design.regressors import (convolution_matrix, frame_times, make_regressors,
                                     sample_activations)
    from bids_vlm.inputs.stimuli import Timeline, sample_items

    config = from_json(config_json)
    timelines = json.loads(open(timelines_file).read())
    runs = [run_from_dict(d) for d in json.loads(runs_json)]
    tls = [Timeline.from_dict(timelines[r.label]) for r in runs]
    matrices = [convolution_matrix(tl.times, tl.dt,
                                   frame_times(r.n_scans, r.tr, r.slice_time_ref),
                                   config.stats.hrf_model, config.stats.oversampling,
                                   config.stats.fir_delays)
                for tl, r in zip(tls, runs)]
    voxels = np.concatenate([np.load(f) for f in cleaned_files], axis=0)
    edges = np.cumsum([0] + [len(tl.times) for tl in tls])
    run_confounds = [read_confounds(r.confounds, r.n_scans, config.bold) for r in runs]
    projections = [cleaning_projection(r.n_scans, r.tr, c, config.bold)
                   for r, c in zip(runs, run_confounds)]
    removed = sum(int(round(r.n_scans - np.trace(m))) for r, m in zip(runs, projections))
    noise = {}  # the association's noise model (exact GLM variance) unless --autocorr none
    if config.stats.autocorr != "none":
        n_lags = config.stats.n_lags or default_lags([r.n_scans for r in runs])
        sums = pooled_noise_sums(cleaned_files)[:n_lags + 1]
        rho = np.divide(sums[1:], sums[0], out=np.zeros_like(sums[1:]), where=sums[0] > 1e-12)
        noise = dict(noise_rho=rho, lag_traces=sum(lag_traces(m, n_lags) for m in projections),
                     run_lengths=[r.n_scans for r in runs])
    path = os.path.abspath("atoms.h5")
    with h5py.File(activations_file, "r") as acts, h5py.File(path, "w") as out:
        out.attrs["model"] = acts.attrs["model"]
        for stream in (s for s in acts if s != "items"):
            index = {k: i for i, k in enumerate(acts[f"items/{stream}"].asstr()[()])}
            for layer in acts[stream]:
                table = acts[f"{stream}/{layer}"][()]
                samples = np.concatenate([sample_activations(sample_items(tl, stream), table,
                                                             index) for tl in tls])
                atoms, loadings = learn_atoms(samples, config.stats.n_atoms,
                                              config.stats.atom_alpha, config.model.seed)
                regs = np.concatenate([
                    clean_signals(make_regressors(m, atoms[a:b]), r.tr, confounds, config.bold)
                    for m, a, b, r, confounds in zip(matrices, edges[:-1], edges[1:], runs,
                                                     run_confounds)])
                t, q, df = atom_glm(regs, voxels, n_removed=removed, **noise)
                for name, value in (("atoms", atoms), ("loadings", loadings), ("t", t),
                                    ("q", q)):
                    out[f"{stream}/{layer}/{name}"] = value
                out.attrs["df"] = df
    return path


def outputs_node(association_files, encoding_files, atom_files, mask_file, unit_json, output_dir,
                 bids_dir, config_json, lesion_files=None, enrichment_files=None):
    """Write the participant's derivatives for one analysis unit; returns the written paths."""
    import json

    from bids_vlm.config import from_json
    from bids_vlm.derivatives.participant import write_unit_outputs

    unit = json.loads(unit_json)
    return [str(p) for p in write_unit_outputs(association_files, encoding_files, mask_file,
                                               unit, output_dir, bids_dir,
                                               from_json(config_json), atom_files or [],
                                               lesion_files or [], enrichment_files or [])]


def report_node(written, output_dir, subject, config_json, skipped_json="{}"):
    """The participant's HTML report (``sub-<label>.html``) from its derivatives; skipped_json:
    {unit: why} of its analysis units left out."""
    import json

    from bids_vlm.config import from_json
    from bids_vlm.reports.participant import participant_report

    return str(participant_report(output_dir, subject, from_json(config_json),
                                  json.loads(skipped_json)))
