"""The participants' cleaned BOLD (opt-in, ``--save-cleaned``): the time series every analysis
of the participant used, for the group level's across-subjects noise ceiling.

One 4D float32 NIfTI per run, ``sub-<label>[_ses-]_task-<task>[_acq-]_run-<n>[_space-]
_desc-cleaned_bold.nii.gz`` in the participant's func/ folder (zero outside the analysis mask;
a ``.dtseries.nii`` on the input's grayordinates for CIFTI),
with a sidecar holding ``RunSignature``: a hash of the run's stimulus timeline, number of scans
and TR (:func:`bids_vlm.inputs.stimuli.run_signature`), equal for the runs of any
participants that showed the same stimuli at the same times.
"""
from __future__ import annotations

import re

import numpy as np

from bids_vlm import brainmask
from bids_vlm.derivatives.io import save_image, write_json
from bids_vlm.names import bids_name
from bids_vlm.derivatives.participant.common import func_dir
from bids_vlm.inputs.stimuli import run_signature

CLEANED = "desc-cleaned_bold"
SERIES_EXTENSION = {False: ".nii.gz", True: ".dtseries.nii"}


def write_cleaned(cleaned_files, timelines: dict, mask_file, unit, output_dir) -> list:
    """Write each run's cleaned (n_scans, V) array (``cleaned_files``, in the order of the
    runs of ``unit``, an :class:`bids_vlm.inputs.units.AnalysisUnit`) as a 4D map;
    ``timelines``: {run label: timeline dict}. Returns the written paths."""
    mask = brainmask.load(mask_file)
    folder = func_dir(output_dir, unit)
    written = []
    for path, run in zip(cleaned_files, unit.runs, strict=True):
        data = np.load(path)  # (n_scans, V)
        name = bids_name(dict(unit.entities, run=run.run, desc="cleaned"), "bold",
                         SERIES_EXTENSION[brainmask.is_grayordinates(mask)])
        written.append(_write_bold(folder / name, data, mask, run.tr, {
            "Sources": [run.bold], "RepetitionTime": run.tr, "TaskName": run.task,
            "SkullStripped": True,
            "RunSignature": run_signature(timelines[run.label], run.n_scans, run.tr),
            "Description": "cleaned BOLD of the run as analysed (masked; confounds regressed "
                           "out, detrended, high-pass filtered, z-scored per voxel); "
                           "RunSignature is equal for runs that showed the same stimulus "
                           "sequence (hash of the stimulus timeline, number of scans and TR)"}))
    return written


def _write_bold(path, data, mask, tr: float, sidecar: dict):
    """(n_scans, V) in-mask ``data`` as a float32 4D NIfTI with the TR in its header, or a
    CIFTI dtseries with the TR as its series step."""
    save_image(path, brainmask.series_image(data, mask, tr))
    write_json(re.sub(r"(\.nii\.gz|\.dtseries\.nii)$", ".json", str(path)), sidecar)
    return path
