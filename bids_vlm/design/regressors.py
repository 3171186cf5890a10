"""Stage 4: AN activations on the stimulus grid -> HRF-convolved regressors on BOLD frames.

nilearn's :func:`~nilearn.glm.first_level.compute_regressor` is linear in the event amplitudes
when the events are fixed. All ANs share the same events (the samples of the timeline, each
``dt`` long, amplitude = the AN's activation), so the regressors of every AN are one matrix
product ``M @ A`` with ``M[:, k]`` = ``compute_regressor`` of sample ``k`` with amplitude 1.
That is exactly what nilearn computes per AN (tested), at the cost of one call per sample.
"""
from __future__ import annotations

import numpy as np
from nilearn.glm.first_level import compute_regressor

HRF_MODELS = ("spm", "glover", "fir")


def frame_times(n_scans: int, tr: float, slice_time_ref: float = 0.0) -> np.ndarray:
    """(n_scans,) time in seconds that each BOLD frame represents: ``arange(n_scans) * tr +
    slice_time_ref``.

    ``slice_time_ref``: seconds from a volume's onset to the time its data represent (the
    run's :attr:`bids_vlm.inputs.bids.RunSpec.slice_time_ref`: fMRIPrep's ``StartTime`` after slice
    timing correction, the mean ``SliceTiming`` without; 0, the volume onset, when unknown).
    This is nilearn's ``FirstLevelModel`` frame times, whose ``slice_time_ref`` is the same
    offset as a fraction of the TR; sampling at the volume onsets instead shifts the
    regressors by up to a TR against the data.
    """
    return np.arange(n_scans) * float(tr) + float(slice_time_ref)


def convolution_matrix(sample_times, dt, frames, hrf_model="spm", oversampling=16,
                       fir_delays=()):
    """M: (n_frames, n_samples), the response at each frame to a unit sample of ``dt`` seconds;
    for ``hrf_model="fir"``, (n_delays, n_frames, n_samples), one matrix per delay (in frames).

    sample_times: (n_samples,) sample onsets in seconds; frames: (n_frames,) frame times.
    """
    if hrf_model not in HRF_MODELS:
        raise ValueError(f"hrf_model must be one of {HRF_MODELS}, not '{hrf_model}'")
    if hrf_model == "fir" and not fir_delays:
        raise ValueError("hrf_model 'fir' needs fir_delays (in frames), e.g. (1, 2, 3, 4)")
    delays = [int(d) for d in fir_delays] if hrf_model == "fir" else None
    columns = []
    for onset in np.asarray(sample_times, float):
        condition = np.array([[onset], [dt], [1.0]])
        reg, _ = compute_regressor(condition, hrf_model, frames, oversampling=oversampling,
                                   fir_delays=delays)
        columns.append(reg)
    if not columns:
        shape = (len(frames), 0) if delays is None else (len(delays), len(frames), 0)
        return np.zeros(shape)
    stacked = np.stack(columns, axis=-1)  # (n_frames, n_columns, n_samples)
    return stacked[:, 0] if delays is None else np.moveaxis(stacked, 1, 0)


def sample_activations(keys, table: np.ndarray, index: dict) -> np.ndarray:
    """(n_samples, n_an) activations of a timeline: row ``index[key]`` of ``table``, 0 if blank.

    keys: n_samples stimulus keys (None = blank); table: (n_stimuli, n_an).
    """
    out = np.zeros((len(keys), table.shape[1]), dtype=np.float32)
    rows = [(k, index[key]) for k, key in enumerate(keys) if key is not None]
    if rows:
        samples, stim_rows = map(list, zip(*rows))
        out[samples] = table[stim_rows]
    return out


def zscore(x: np.ndarray) -> np.ndarray:
    """Z-score the columns of x (n_frames, n) with ddof 0; constant columns become 0."""
    x = x - x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    tiny = 1e-10 * max(1.0, float(np.abs(x).max(initial=0.0)))
    return np.divide(x, sd, out=np.zeros_like(x), where=sd > tiny)


def make_regressors(matrix: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """Regressors of one run, z-scored: (n_frames, n_an) = zscore(matrix @ activations).

    matrix: (n_frames, n_samples) from :func:`convolution_matrix`, or (n_delays, n_frames,
    n_samples) for FIR, whose single regressor per AN is the mean of its delayed responses (the
    response in a window of frames); activations: (n_samples, n_an) from
    :func:`sample_activations`.
    """
    if matrix.ndim == 3:
        matrix = matrix.mean(0)
    return zscore(matrix.astype(np.float64) @ activations.astype(np.float64)).astype(np.float32)


def make_delayed_regressors(matrix: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """FIR features of one run for encoding models: (n_frames, n_delays * n_an), each delay's
    copy z-scored (delay-major columns). matrix: (n_delays, n_frames, n_samples)."""
    acts = activations.astype(np.float64)
    return np.concatenate([zscore(m.astype(np.float64) @ acts) for m in matrix],
                          axis=1).astype(np.float32)
