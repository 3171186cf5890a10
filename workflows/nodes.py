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
    """The analysis mask (:func:`bids_vlm.design.bold.unit_mask`) -> ``mask.nii.gz``, or
    for CIFTI runs their grayordinates -> ``mask.dscalar.nii``."""
    import json
    import os

    import nibabel as nib

    from bids_vlm.design.bold import unit_mask
    from bids_vlm.inputs.bids import run_from_dict

    mask = unit_mask([run_from_dict(d) for d in json.loads(runs_json)])
    cifti = isinstance(mask, nib.Cifti2Image)
    path = os.path.abspath("mask.dscalar.nii" if cifti else "mask.nii.gz")
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
    from bids_vlm.design.bold import load_bold
    from bids_vlm.design.cleaned_runs import noise_path
    from bids_vlm.design.cleaning import (censored_frames, clean_signals, noise_lag_sums,
                                          read_confounds, run_lags)

    from bids_vlm.memory import released

    run = run_from_dict(json.loads(run_json))
    config = from_json(config_json)
    path = os.path.abspath(f"{run.label}_cleaned.npy")
    with released():
        data = load_bold(run.bold, mask_file, config.bold)
        confounds = read_confounds(run.confounds, data.shape[0], config.bold)
        np.save(noise_path(path), noise_lag_sums(data, run_lags(run.n_scans, config.stats.n_lags),
                                                 censored_frames(run.confounds, data.shape[0])))
        np.save(path, clean_signals(data, run.tr, confounds, config.bold))
    return path


def save_cleaned_node(cleaned_files, timelines_file, mask_file, unit_json, output_dir):
    """With ``--save-cleaned``: every run's cleaned BOLD as a derivative
    (``desc-cleaned_bold.nii.gz``, its stimulus-sequence signature in the sidecar), for the
    group level's across-subjects noise ceiling; returns the written paths."""
    import json

    from bids_vlm.derivatives.participant.cleaned import write_cleaned
    from bids_vlm.inputs.units import unit_from_json

    unit = unit_from_json(unit_json)
    timelines = json.loads(open(timelines_file).read())
    return [str(p) for p in write_cleaned(cleaned_files, timelines, mask_file, unit,
                                          output_dir)]


def extract_node(timelines_file, model_name, config_json, cache_dir, execution_dir=""):
    """AN activations of every unique stimulus -> ``activations.h5`` through the activation
    cache in ``cache_dir`` (:func:`bids_vlm.models.write_activations`), on the device and in
    the batches of ``execution_dir`` (:func:`bids_vlm.config.read_execution`)."""
    import json
    import os

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.inputs.stimuli import Timeline
    from bids_vlm.memory import released
    from bids_vlm.models import write_activations

    execution = read_execution(execution_dir)
    timelines = [Timeline.from_dict(t) for t in json.loads(open(timelines_file).read()).values()]
    with released():
        return write_activations(timelines, model_name, from_json(config_json), cache_dir,
                                 os.path.abspath("activations.h5"), execution.device,
                                 execution.batch_size)


def regressors_node(timelines_file, activations_file, runs_json, config_json):
    """HRF regressors of every AN, runs concatenated -> ``regressors.h5``
    (:func:`bids_vlm.design.runs.write_regressors`)."""
    import json
    import os

    from bids_vlm.config import from_json
    from bids_vlm.design.runs import write_regressors
    from bids_vlm.inputs.bids import run_from_dict

    runs = [run_from_dict(d) for d in json.loads(runs_json)]
    timelines = json.loads(open(timelines_file).read())
    return write_regressors(timelines, activations_file, runs, from_json(config_json),
                            os.path.abspath("regressors.h5"))


def associate_node(regressors_file, cleaned_files, config_json, execution_dir=""):
    """AN x voxel association of every layer -> ``association.h5`` (one group per layer;
    :func:`bids_vlm.stats.layers.associate_layers`), with the device, block size and memory
    of ``execution_dir``."""
    import os

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.memory import released
    from bids_vlm.stats.layers import associate_layers

    with released():
        return associate_layers(regressors_file, cleaned_files, from_json(config_json),
                                read_execution(execution_dir), os.path.abspath("association.h5"))


def encode_node(regressors_file, cleaned_files, config_json, execution_dir=""):
    """Leave-one-run-out ridge encoding of every layer -> ``encoding.h5``
    (:func:`bids_vlm.encoding.layers.encode_layers`), on the device of ``execution_dir``."""
    import os

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.encoding.layers import encode_layers
    from bids_vlm.memory import released

    with released():
        return encode_layers(regressors_file, cleaned_files, from_json(config_json),
                             read_execution(execution_dir).device, os.path.abspath("encoding.h5"))


def enrich_node(association_file, mask_file, unit_json, config_json):
    """Network enrichment (with its spatial null) of every layer of one model's association ->
    ``enrichment.h5``, read by the lesion and the networks table."""
    import os

    from bids_vlm.config import from_json
    from bids_vlm.analysis.layers import write_enrichment
    from bids_vlm.inputs.units import unit_from_json
    from bids_vlm.memory import released

    with released():
        return write_enrichment(association_file, mask_file, unit_from_json(unit_json),
                                from_json(config_json), os.path.abspath("enrichment.h5"))


def lesion_node(regressors_file, cleaned_files, association_file, encoding_file, mask_file,
                unit_json, config_json, enrichment_file, execution_dir=""):
    """Virtual lesion of every network driven by the model's ANs -> ``lesion.json`` (on the
    device of ``execution_dir``)."""
    import json
    import os
    from pathlib import Path

    from bids_vlm.config import from_json, read_execution
    from bids_vlm.analysis.layers import compute_lesion
    from bids_vlm.inputs.units import unit_from_json
    from bids_vlm.memory import released

    with released():
        result = compute_lesion(regressors_file, cleaned_files, association_file, encoding_file,
                                mask_file, unit_from_json(unit_json), from_json(config_json),
                                enrichment_file, device=read_execution(execution_dir).device)
    path = os.path.abspath("lesion.json")
    Path(path).write_text(json.dumps(result))
    return path


def atoms_node(timelines_file, activations_file, runs_json, cleaned_files, config_json):
    """Paper mode: atoms of every layer's AN time series fitted to every voxel -> ``atoms.h5``
    (:func:`bids_vlm.encoding.atoms.write_atoms`)."""
    import json
    import os

    from bids_vlm.config import from_json
    from bids_vlm.encoding.atoms import write_atoms
    from bids_vlm.inputs.bids import run_from_dict

    runs = [run_from_dict(d) for d in json.loads(runs_json)]
    timelines = json.loads(open(timelines_file).read())
    return write_atoms(timelines, activations_file, runs, cleaned_files, from_json(config_json),
                       os.path.abspath("atoms.h5"))


def outputs_node(association_files, encoding_files, atom_files, mask_file, unit_json, output_dir,
                 bids_dir, config_json, lesion_files=None, enrichment_files=None):
    """Write the participant's derivatives for one analysis unit; returns the written paths."""
    from bids_vlm.config import from_json
    from bids_vlm.derivatives.participant import write_unit_outputs
    from bids_vlm.inputs.units import unit_from_json
    from bids_vlm.memory import released

    unit = unit_from_json(unit_json)
    with released():
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
