"""Simulated BOLD with the nuisance structure of real data, for calibration checks.

Null voxels are autocorrelated noise (white, AR(1) or 1/f) plus slow drift; each run has
random-walk motion-like confounds; AN regressors are HRF-convolved activations on a 1 s grid
(dense, like a movie's features; optionally correlated across ANs through shared factors).
Both sides are cleaned exactly as the pipeline cleans them (:mod:`bids_vlm.design.cleaning`), and the
noise lag sums and cleaning traces the association's ``exact`` null variance needs are
computed as the pipeline computes them. Used by ``benchmarks/bench_calibration.py`` and the
calibration tests.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from bids_vlm.config import BoldConfig
from bids_vlm.stats.autocorr import default_lags
from bids_vlm.design.cleaning import (clean_signals, cleaning_projection, lag_traces, noise_lag_sums)
from bids_vlm.design.regressors import convolution_matrix, frame_times


@dataclass(frozen=True)
class Design:
    """A simulated session: ``n_runs`` runs of ``n_frames`` frames, ``tr`` seconds,
    ``n_confounds`` random-walk confounds per run, ``noise`` "white", "ar1:PHI" or "1/f"."""

    n_runs: int = 2
    n_frames: int = 200
    tr: float = 2.0
    n_confounds: int = 12
    noise: str = "ar1:0.6"
    drift: float = 0.0  # SD of a slow random-walk drift added to the noise, in noise SDs


@dataclass
class Session:
    """Cleaned data of a simulated session: voxels (T, V), regressors (T, N), run_lengths,
    n_removed, noise_sums (K + 1, V) and lag_traces (K + 1,) as the pipeline computes them."""

    voxels: np.ndarray
    regressors: np.ndarray
    run_lengths: list
    n_removed: int
    noise_sums: np.ndarray
    lag_traces: np.ndarray
    presence: np.ndarray | None = None  # (T,) cleaned stimulus-presence regressor

    def association_args(self) -> dict:
        return dict(run_lengths=self.run_lengths, n_removed=self.n_removed,
                    noise_sums=self.noise_sums, lag_traces=self.lag_traces)


def noise(rng, n_frames: int, n_vox: int, kind: str = "ar1:0.6") -> np.ndarray:
    """(n_frames, n_vox) unit-variance noise: "white", "ar1:PHI" or "1/f" (pink)."""
    if kind == "white":
        return rng.standard_normal((n_frames, n_vox))
    if kind.startswith("ar1:"):
        phi, burn = float(kind[4:]), 200
        e = rng.standard_normal((n_frames + burn, n_vox)) * np.sqrt(1 - phi ** 2)
        out = np.empty_like(e)
        out[0] = rng.standard_normal(n_vox)
        for t in range(1, len(e)):
            out[t] = phi * out[t - 1] + e[t]
        return out[burn:]
    if kind == "1/f":
        n = 2 * n_frames
        freqs = np.fft.rfftfreq(n)
        amp = np.where(freqs > 0, 1.0 / np.sqrt(np.maximum(freqs, 1.0 / n)), 0.0)
        spec = amp[:, None] * (rng.standard_normal((len(freqs), n_vox))
                               + 1j * rng.standard_normal((len(freqs), n_vox)))
        out = np.fft.irfft(spec, n=n, axis=0)[:n_frames]
        return out / out.std(0)
    raise ValueError(f"unknown noise '{kind}'")


@functools.lru_cache(maxsize=8)
def _hrf_matrix(n_frames: int, tr: float) -> np.ndarray:
    """(n_frames, n_samples) responses to 1 s samples (:mod:`bids_vlm.design.regressors`)."""
    times = np.arange(0.0, n_frames * tr, 1.0)
    return convolution_matrix(times, 1.0, frame_times(n_frames, tr), "spm", 4)


def activations(rng, n_samples: int, n_an: int, shared: float = 0.0,
                n_factors: int = 3) -> np.ndarray:
    """(n_samples, n_an) AN activations: independent normals, or with a share ``shared`` of
    variance from ``n_factors`` common factors (mean inter-AN r about ``shared`` / n_factors
    per factor's sign pattern: positive loadings give mean r about ``shared``)."""
    own = rng.standard_normal((n_samples, n_an))
    if not shared:
        return own
    factors = rng.standard_normal((n_samples, n_factors))
    loads = np.abs(rng.standard_normal((n_factors, n_an)))
    common = factors @ loads
    common /= common.std(0)
    return np.sqrt(shared) * common + np.sqrt(1 - shared) * own


def session(rng, design: Design, n_vox: int, acts: np.ndarray | None = None, n_an: int = 40,
            signal=None, config: BoldConfig = BoldConfig(), on=None) -> Session:
    """A cleaned simulated session. acts: (n_runs * n_frames * tr, N) activations on the 1 s
    grid (default independent normals); signal(regressors_raw (T_run, N)) -> (T_run, V) to add
    to the noise (planted effects), default none; on: (n_samples,) 0/1 stimulus presence on the
    same grid: its regressor is the last column signal sees, and the session's presence."""
    n_samples = int(design.n_frames * design.tr)
    if acts is None:
        acts = activations(rng, n_samples * design.n_runs, n_an)
    if on is not None:
        acts = np.column_stack([acts, on])
    matrix = _hrf_matrix(design.n_frames, design.tr)
    runs = [design.n_frames] * design.n_runs
    n_lags = default_lags(runs)
    parts, sums, traces, removed = [], 0.0, 0.0, 0
    for r in range(design.n_runs):
        raw_x = matrix @ acts[r * n_samples:(r + 1) * n_samples]
        y = noise(rng, design.n_frames, n_vox, design.noise)
        if design.drift:
            y += design.drift * np.cumsum(rng.standard_normal((design.n_frames, 1)), 0) / \
                np.sqrt(design.n_frames)
        if signal is not None:
            y = y + signal(raw_x / raw_x.std(0))
        conf = np.cumsum(rng.standard_normal((design.n_frames, design.n_confounds)), 0)
        conf = conf if design.n_confounds else None
        parts.append((clean_signals(y, design.tr, conf, config),
                      clean_signals(raw_x, design.tr, conf, config)))
        sums = sums + noise_lag_sums(y, n_lags)
        proj = cleaning_projection(design.n_frames, design.tr, conf, config)
        traces = traces + lag_traces(proj, n_lags)
        removed += int(round(design.n_frames - np.trace(proj)))
    x = np.concatenate([p[1] for p in parts])
    return Session(voxels=np.concatenate([p[0] for p in parts]),
                   regressors=x[:, :-1] if on is not None else x, run_lengths=runs,
                   n_removed=removed, noise_sums=sums, lag_traces=traces,
                   presence=x[:, -1] if on is not None else None)


def event_design(rng, n_samples: int, n_an: int, on_s: int = 4, off_s: int = 8,
                 bias: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(n_samples, n_an) activations of images shown ``on_s`` s with ``off_s`` s blanks, each
    AN's activation to an image ``bias`` + a normal draw (a positive mean, as real units
    have), and (n_samples,) the 0/1 presence."""
    period = on_s + off_s
    on = (np.arange(n_samples) % period < on_s).astype(float)
    image = np.arange(n_samples) // period
    draws = bias + rng.standard_normal((image.max() + 1, n_an))
    return draws[image] * on[:, None], on
