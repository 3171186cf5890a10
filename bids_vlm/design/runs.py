"""The design of each run of an analysis unit, built once for every regressor made from it: the
stimulus timeline, its HRF convolution onto the BOLD frames, the confounds and the cleaning
projection. The association's regressors (:func:`bids_vlm.design.regressors.write_regressors`)
and the paper mode's atom regressors (:func:`bids_vlm.encoding.atoms.write_atoms`) are both
``clean(make_regressors(matrix, samples))`` per run, concatenated over runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from bids_vlm.design.cleaning import (clean_signals, cleaning_projection, lag_traces,
                                      read_confounds)
from bids_vlm.design.regressors import (convolution_matrix, frame_times,
                                        make_delayed_regressors, make_regressors,
                                        sample_activations)
from bids_vlm.inputs.stimuli import Timeline, run_signature, sample_items
from bids_vlm.stats.autocorr import default_lags


@dataclass
class RunDesign:
    """One run: its RunSpec, timeline, matrix (n_scans, n_samples) from stimulus samples to
    HRF-convolved frames, confounds (n_scans, C) or None, and the cleaning projection
    (n_scans, n_scans)."""

    run: object
    timeline: Timeline
    matrix: np.ndarray
    confounds: np.ndarray | None
    projection: np.ndarray

    @property
    def removed(self) -> int:
        """Dimensions the cleaning projects out of the run."""
        return int(round(self.run.n_scans - np.trace(self.projection)))

    def clean(self, x: np.ndarray, bold) -> np.ndarray:
        """x (n_scans, k) cleaned as the run's BOLD is (``bold``: the BoldConfig)."""
        return clean_signals(x, self.run.tr, self.confounds, bold)


def run_designs(runs, timelines: dict, config) -> list[RunDesign]:
    """The :class:`RunDesign` of each run (RunSpecs), from ``timelines`` ({run label:
    :meth:`~bids_vlm.inputs.stimuli.Timeline.to_dict`}) and the AnalysisConfig."""
    out = []
    for run in runs:
        timeline = Timeline.from_dict(timelines[run.label])
        frames = frame_times(run.n_scans, run.tr, run.slice_time_ref)
        matrix = convolution_matrix(timeline.times, timeline.dt, frames, config.stats.hrf_model,
                                    config.stats.oversampling, config.stats.fir_delays)
        confounds = read_confounds(run.confounds, run.n_scans, config.bold)
        projection = cleaning_projection(run.n_scans, run.tr, confounds, config.bold)
        out.append(RunDesign(run, timeline, matrix, confounds, projection))
    return out


def unit_regressors(designs, samples, bold, build=make_regressors) -> np.ndarray:
    """(sum n_scans, k): ``build(matrix, samples)`` of each run, cleaned as its BOLD, runs
    concatenated; samples: per run (n_samples, k) values at its timeline's samples."""
    return np.concatenate([d.clean(build(d.matrix, s), bold) for d, s in zip(designs, samples)])


def write_regressors(timelines: dict, activations_file, runs, config, path) -> str:
    """HRF regressors of every AN, runs concatenated -> ``path`` (HDF5): ``<stream>/<layer>``
    (sum n_scans, units), each run's cleaned like its BOLD (confounds, detrend, high-pass;
    :func:`bids_vlm.design.cleaning.clean_signals`) and z-scored; ``nuisance/presence/<stream>``
    (any stimulus of the stream shown); with the FIR model ``delayed/<stream>/<layer>`` for the
    encoding; attributes: run lengths, the dimensions the cleaning removed, its lag traces and
    each run's stimulus-sequence signature. activations_file: the extract stage's."""
    designs = run_designs(runs, timelines, config)
    n_lags = config.stats.n_lags or default_lags([r.n_scans for r in runs])
    with h5py.File(activations_file, "r") as acts, h5py.File(path, "w") as out:
        index = {s: {k: i for i, k in enumerate(acts[f"items/{s}"].asstr()[()])}
                 for s in acts["items"]}
        for stream in (s for s in acts if s != "items"):
            out[f"nuisance/presence/{stream}"] = unit_regressors(  # any stimulus of the stream
                designs, [_presence(d.timeline, stream) for d in designs], config.bold)
            for layer in acts[stream]:
                table = acts[f"{stream}/{layer}"][()]
                samples = [sample_activations(sample_items(d.timeline, stream), table,
                                              index[stream]) for d in designs]
                out[f"{stream}/{layer}"] = unit_regressors(designs, samples, config.bold)
                if config.stats.hrf_model == "fir":  # delayed copies for the encoding models
                    out[f"delayed/{stream}/{layer}"] = unit_regressors(
                        designs, samples, config.bold, make_delayed_regressors)
        traces = [lag_traces(d.projection, n_lags) for d in designs]
        out.attrs["model"] = acts.attrs["model"]
        out.attrs["n_layers"] = acts.attrs.get("n_layers", "{}")
        out.attrs["run_lengths"] = [r.n_scans for r in runs]
        out.attrs["n_removed"] = sum(d.removed for d in designs)  # dimensions projected out
        out.attrs["run_removed"] = [d.removed for d in designs]  # per run, and the lag traces
        out.attrs["lag_traces"] = np.sum(traces, 0)  # sum_t M[t, t+k] of the projections
        out.attrs["run_lag_traces"] = np.array(traces)  # (n_runs, K + 1)
        out.attrs["run_signatures"] = [  # equal for runs showing the same stimulus sequence
            run_signature(timelines[r.label], r.n_scans, r.tr) for r in runs]
    return str(path)


def _presence(timeline, stream) -> np.ndarray:
    """(n_samples, 1) float32: 1 where the stream shows a stimulus."""
    return np.array([[x is not None] for x in sample_items(timeline, stream)], np.float32)
