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

HRF_MODELS = ("spm", "glover")


def frame_times(n_scans: int, tr: float) -> np.ndarray:
    """(n_scans,) acquisition time of each BOLD frame in seconds (nilearn's convention)."""
    return np.arange(n_scans) * float(tr)


def convolution_matrix(sample_times, dt, frames, hrf_model="spm", oversampling=16):
    """M: (n_frames, n_samples), the response at each frame to a unit sample of ``dt`` seconds.

    sample_times: (n_samples,) sample onsets in seconds; frames: (n_frames,) frame times.
    """
    if hrf_model not in HRF_MODELS:
        raise ValueError(f"hrf_model must be one of {HRF_MODELS}, not '{hrf_model}'")
    columns = []
    for onset in np.asarray(sample_times, float):
        condition = np.array([[onset], [dt], [1.0]])
        reg, _ = compute_regressor(condition, hrf_model, frames, oversampling=oversampling)
        columns.append(reg[:, 0])
    if not columns:
        return np.zeros((len(frames), 0))
    return np.stack(columns, axis=1)


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

    matrix: (n_frames, n_samples) from :func:`convolution_matrix`;
    activations: (n_samples, n_an) from :func:`sample_activations`.
    """
    return zscore(matrix.astype(np.float64) @ activations.astype(np.float64)).astype(np.float32)
