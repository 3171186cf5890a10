"""Noise ceiling of the layer-wise encoding from runs that repeat the same stimuli.

When n >= 2 runs show the same stimulus sequence, every frame is a stimulus measured n times.
Per voxel (Allen et al. 2022, Nature Neuroscience 25:116, "ncsnr"; Lage-Castellanos et al. 2019,
PLoS Comput Biol 15:e1006397), with each run centred:

    noise variance  s_n^2 = mean over frames of the variance over repeats (ddof 1)
    signal variance s_s^2 = variance over frames of the mean over repeats - s_n^2 / n
    ncsnr = sqrt(max(s_s^2, 0)) / s_n

pooled over groups of repeated runs (weighted by frames). The encoding is scored on one held-out
run, so its ceiling is the correlation of the noise-free response with one run of data:

    r_ceiling = ncsnr / sqrt(ncsnr^2 + 1) = sqrt(s_s^2 / (s_s^2 + s_n^2))

(R^2 ceiling r_ceiling^2). Held-out r / r_ceiling is the fraction of the explainable correlation
a model reaches. Runs repeat when they show the same stimulus sequence: the pipeline compares a
signature of each run's timeline (:func:`repeated_signatures`; :func:`repeated_runs` compares
uncleaned regressors instead).

Across subjects (:func:`intersubject_ceiling`, the group level's ``desc-isc`` maps): when
several subjects saw the same stimulus sequence and their data share a grid, the subjects are
the repeats of the same formula (each subject's run z-scored first).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseCeiling:
    """r (V,): ceiling of the held-out Pearson r on one run; ncsnr (V,); groups: the runs
    (0-based indices) that repeat the same stimuli, one tuple per sequence."""

    r: np.ndarray
    ncsnr: np.ndarray
    groups: tuple


def repeated_runs(regressors, run_lengths, atol: float = 1e-6) -> list[tuple[int, ...]]:
    """Groups of >= 2 runs whose regressors are identical over their frames.

    regressors: (T, N) array, or a sequence of them (every layer's; runs must match in all).
    Only runs of equal length can repeat; each run joins the first earlier run it equals.
    """
    arrays = [regressors] if hasattr(regressors, "shape") else list(regressors)
    bounds = np.cumsum([0, *run_lengths])

    def same(i, j):
        return bool(run_lengths[i] == run_lengths[j]) and all(
            np.allclose(a[bounds[i]:bounds[i + 1]], a[bounds[j]:bounds[j + 1]], rtol=0.0,
                        atol=atol) for a in arrays)

    groups: list[list[int]] = []
    for i in range(len(run_lengths)):
        match = next((g for g in groups if same(g[0], i)), None)
        if match is None:
            groups.append([i])
        else:
            match.append(i)
    return [tuple(g) for g in groups if len(g) >= 2]


def repeated_signatures(signatures) -> list[tuple[int, ...]]:
    """Groups of >= 2 runs with the same stimulus-sequence signature (e.g. a hash of the run's
    timeline, length and TR): the runs showed the same stimuli at the same times."""
    groups: dict = {}
    for i, signature in enumerate(signatures):
        groups.setdefault(signature, []).append(i)
    return [tuple(g) for g in groups.values() if len(g) >= 2]


def ceiling_from_signatures(signatures, voxels, run_lengths) -> NoiseCeiling | None:
    """:func:`noise_ceiling` of the runs with equal stimulus-sequence signatures (the regressors
    of such runs differ once each is cleaned with its own confounds); None, with an INFO log,
    without repeats."""
    return _ceiling_or_log(repeated_signatures(signatures), voxels, run_lengths, "")


def ceiling_from_regressors(regressors, voxels, run_lengths) -> NoiseCeiling | None:
    """:func:`noise_ceiling` of the runs that :func:`repeated_runs` finds; None (and an INFO
    log saying why) without repeats."""
    return _ceiling_or_log(repeated_runs(regressors, run_lengths), voxels, run_lengths,
                           " (identical AN regressors)")


def _ceiling_or_log(groups, voxels, run_lengths, how) -> NoiseCeiling | None:
    if not groups:
        logging.getLogger("bids_vlm").info(
            "noise ceiling not computed: no two runs show the same stimulus sequence%s; it "
            "needs repeated stimuli across runs", how)
        return None
    return noise_ceiling(voxels, run_lengths, groups)


CHUNK = 4096  # voxels at a time: a group's float64 stack of 12 runs x 300 frames is 113 MiB


def noise_ceiling(voxels, run_lengths, groups, chunk: int = CHUNK) -> NoiseCeiling | None:
    """Noise ceiling of every voxel of ``voxels`` (T, V) from the repeated runs ``groups``
    (from :func:`repeated_runs`); None without repeats. Voxels ``chunk`` at a time (each
    voxel's ceiling is its own: a whole brain's float64 stacks would hold the BOLD 4 times
    over)."""
    groups = [tuple(g) for g in groups if len(g) >= 2]
    if not groups:
        return None
    bounds = np.cumsum([0, *run_lengths])
    for group in groups:
        if len({bounds[i + 1] - bounds[i] for i in group}) != 1:
            raise ValueError(f"runs {group} repeat the same stimuli but differ in length")

    def stacks(cols):  # each group's runs (n, L, v) float64, each run centred
        out = []
        for group in groups:
            y = np.stack([np.asarray(voxels[bounds[i]:bounds[i + 1], cols], dtype=np.float64)
                          for i in group])
            out.append(y - y.mean(1, keepdims=True))
        return out
    return _by_chunks(stacks, np.shape(voxels)[1], tuple(groups), chunk)


def _by_chunks(stacks, n_vox: int, groups, chunk: int) -> NoiseCeiling:
    """:func:`pooled_ceiling` of stacks(cols) for the voxel slices cols of ``chunk`` voxels,
    put together."""
    r, ncsnr = np.empty(n_vox, np.float32), np.empty(n_vox, np.float32)
    for start in range(0, n_vox, chunk):
        cols = slice(start, start + chunk)
        part = pooled_ceiling(stacks(cols))
        r[cols], ncsnr[cols] = part.r, part.ncsnr
    return NoiseCeiling(r=r, ncsnr=ncsnr, groups=groups)


def pooled_ceiling(stacks, groups=()) -> NoiseCeiling:
    """The ceiling from repeated measurements of the same frames, pooled over ``stacks``.

    stacks: (n, L, V) arrays, n >= 2 repeats (runs, or subjects) of L frames, each repeat
    centred over its frames; noise and signal variances are averaged over the stacks weighted
    by their frames. ``groups`` is only recorded in the result.
    """
    noise, signal, frames = 0.0, 0.0, 0
    for y in stacks:
        n, length = y.shape[:2]
        group_noise = y.var(0, ddof=1).mean(0)
        noise = noise + length * group_noise
        signal = signal + length * (y.mean(0).var(0, ddof=1) - group_noise / n)
        frames += length
    return _from_variances(noise / frames, signal / frames, groups)


def _from_variances(noise, signal, groups) -> NoiseCeiling:
    """The ceiling from the pooled noise and signal variances (V,) (signal clipped at 0)."""
    signal = np.maximum(signal, 0.0)
    total = signal + noise
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(total > 0, np.sqrt(signal / total), 0.0)
        ncsnr = np.where(noise > 0, np.sqrt(signal / noise), np.where(signal > 0, np.inf, 0.0))
    return NoiseCeiling(r=r.astype(np.float32), ncsnr=ncsnr.astype(np.float32),
                        groups=tuple(groups))


def intersubject_ceiling(subjects, run_lengths=None, min_subjects: int = 3,
                         chunk: int = CHUNK) -> NoiseCeiling:
    """Across-subjects noise ceiling: the subjects are the repeats of the ncsnr formula.

    subjects: (n_subjects, T, V) array, or a list of n_subjects (T, V) arrays, of cleaned voxel
    time series on one grid; every subject saw the same stimulus sequence (the same runs in the
    same order, ``run_lengths`` frames each; default one run of T frames). Each subject's run
    is z-scored over its frames (subjects differ in BOLD scale), then every run is a group of
    n_subjects repeats (:func:`pooled_ceiling`). The result estimates the ceiling of the r of
    a model of the stimulus-driven signal *shared by the subjects* on one subject's run;
    ``groups`` holds one tuple of subject indices per run. It is :class:`SharedCeiling` fed
    every subject's runs (the group level feeds it from files, a run at a time).
    """
    arrays = [np.asarray(s) for s in subjects]  # a stack: its subjects, not copied
    if len(arrays) < min_subjects:
        raise ValueError(f"an across-subjects ceiling needs >= {min_subjects} subjects, "
                         f"got {len(arrays)}")
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"subjects' time series differ in shape: {sorted(shapes)}")
    n_frames, n_vox = shapes.pop()
    bounds = np.cumsum([0, *(run_lengths or [n_frames])])
    if bounds[-1] != n_frames:
        raise ValueError(f"run lengths sum to {bounds[-1]}, the series have {n_frames} frames")
    shared = SharedCeiling(n_vox, chunk)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        for series in arrays:
            shared.add(series[start:stop])
        shared.end_run()
    return shared.result()


class SharedCeiling:
    """:func:`intersubject_ceiling` accumulated one subject's run at a time: :meth:`add` each
    subject's copy of a run, then :meth:`end_run`; :meth:`result` after the last run.

    It holds the run's sum over subjects of their z-scored series (L, V) float64 and per-voxel
    sums, so its memory does not grow with the subjects (a whole brain at 2 mm, 235,375
    voxels: 565 MB for a run of 300 frames). Per run, with z_s subject s's z-scored series,
    m = their mean and n subjects: noise = (sum_s,t z_s^2 - n sum_t m^2) / (L (n - 1)) (the
    mean over frames of the variance over subjects), signal = the variance of m over frames
    - noise / n; runs are pooled weighted by their frames. Voxels ``chunk`` at a time.
    """

    def __init__(self, n_vox: int, chunk: int = CHUNK):
        self.n_vox, self.chunk = int(n_vox), int(chunk)
        self._noise, self._signal = np.zeros(self.n_vox), np.zeros(self.n_vox)
        self._frames, self._groups = 0, []
        self._sum = self._squares = None
        self._count = 0

    def _slices(self):
        return [slice(s, s + self.chunk) for s in range(0, self.n_vox, self.chunk)]

    def add(self, run) -> None:
        """run: (L, V) one subject's series of the current run (any real type)."""
        run = np.asarray(run)
        if np.shape(run)[1:] != (self.n_vox,) or (
                self._sum is not None and np.shape(run) != self._sum.shape):
            expected = self._sum.shape if self._sum is not None else ("L", self.n_vox)
            raise ValueError(f"a subject's run has shape {np.shape(run)}, expected {expected}")
        if self._sum is None:
            self._sum, self._squares = np.zeros(np.shape(run)), np.zeros(self.n_vox)
        for cols in self._slices():
            z = np.array(run[:, cols], dtype=np.float64)
            z -= z.mean(0)
            sd = z.std(0)
            np.divide(z, sd, out=z, where=sd > 0)
            z[:, sd == 0] = 0.0
            self._sum[:, cols] += z
            self._squares[cols] += np.einsum("tv,tv->v", z, z)
        self._count += 1

    def end_run(self) -> None:
        """Pool the run's variances (every subject's copy added: at least 2)."""
        n = self._count
        if n < 2:
            raise ValueError(f"a run needs >= 2 subjects' copies, got {n}")
        length = self._sum.shape[0]
        for cols in self._slices():
            mean = self._sum[:, cols] / n
            squares = np.einsum("tv,tv->v", mean, mean)
            noise = np.maximum(self._squares[cols] - n * squares, 0.0) / (length * (n - 1))
            spread = (squares - length * mean.mean(0) ** 2) / (length - 1)
            self._noise[cols] += length * noise
            self._signal[cols] += length * (spread - noise / n)
        self._frames += length
        self._groups.append(tuple(range(n)))
        self._sum = self._squares = None
        self._count = 0

    def result(self) -> NoiseCeiling:
        if not self._frames or self._sum is not None:
            raise ValueError("no run ended, or a run was added to and not ended")
        return _from_variances(self._noise / self._frames, self._signal / self._frames,
                               self._groups)


def fraction_of_ceiling(r, ceiling, minimum: float = 0.0) -> np.ndarray:
    """r / ceiling per voxel; NaN where the ceiling is not above ``minimum`` (no reliable
    stimulus-driven signal to explain)."""
    r, ceiling = np.asarray(r, dtype=np.float64), np.asarray(ceiling, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ceiling > minimum, r / ceiling, np.nan).astype(np.float32)


def method_description(ceiling: NoiseCeiling) -> str:
    runs = "; ".join("runs " + ", ".join(str(i + 1) for i in g) for g in ceiling.groups)
    return ("ceiling of the held-out Pearson r on one run: sqrt(signal / (signal + noise)) "
            "variance per voxel, noise = mean over frames of the variance over repeated runs, "
            "signal = variance over frames of their mean - noise / repeats (NSD ncsnr, Allen "
            f"et al. 2022); repeated runs (identical AN regressors, 1-based): {runs}")


def isc_method_description(n_subjects: int, n_frames: int) -> str:
    return ("across-subjects noise ceiling of the held-out Pearson r on one subject's run: "
            "sqrt(signal / (signal + noise)) variance per voxel, each subject's cleaned run "
            "z-scored, noise = mean over frames of the variance across subjects, signal = "
            "variance over frames of the subjects' mean - noise / subjects (NSD ncsnr, Allen "
            f"et al. 2022, with subjects as the repeats); {n_subjects} subjects, {n_frames} "
            "frames; it bounds models of the response shared by the subjects")
