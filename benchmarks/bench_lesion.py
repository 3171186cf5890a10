"""The virtual lesion's peak memory at the paper's 1-hour scale (issue 13: a 1-hour movie within
16 GB), on the arrays the lesion stage holds, against that target.

The end-to-end run (``bench_participant.py --minutes 60 --runs 12``) never reaches the lesion's
refits: with random weights no network is driven. This builds in memory what
:func:`bids_vlm.analysis.layers.compute_lesion` holds when one is, and runs the same function
(:func:`bids_vlm.analysis.lesion.network_lesions`, default statistics and ridge):

- a movie of ``--minutes`` (default 60) in ``--runs`` runs (default 12) at TR 1 s;
- nilearn's MNI152 2 mm brain mask (235,375 voxels; ``--voxels N`` keeps the first N) and the
  default atlas's networks (Yeo 7 and the language network) on that grid; the largest
  network is lesioned;
- the cleaned BOLD (T, V) float32, as the stage loads it: AR(1) noise (phi 0.4), each run
  centred, the network's voxels and a third of the others carrying random mixtures of
  8 HRF-smoothed latent courses;
- each run's noise lag sums over all voxels (float64, as the stage loads them) and the
  cleaning's lag traces;
- one layer of ``--ans`` (default 768, a ViT-B/32 image layer) AN regressors mixing the same
  latents plus their own noise, so that every fold finds BNs in the network and ranks ANs.

The lesion runs for that network at the steps ``--steps`` (fractions of the ANs; each step
refits every fold, so the memory does not grow with their number). The resident memory of this
process is sampled every 0.2 s from /proc during the lesion (data included, as in the stage).
Ends with ``RESULT lesion_peak_memory_gb=<peak> (target <= 16)``. About 10 minutes on 2 cores
at the default size (most of it the refits: 12 folds x 5 inner folds x 2 curves).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from scipy import signal, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_participant import SPACE, brain_mask  # noqa: E402

N_LATENT = 8


class PeakRSS:
    """The largest resident set of this process while in the ``with`` block, sampled every
    ``every`` seconds from /proc/self/statm."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def latents(n_frames: int, rng) -> np.ndarray:
    """(T, N_LATENT) white noise through the canonical HRF at 1 s, unit variance."""
    t = np.arange(32.0)
    hrf = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    drive = rng.standard_normal((n_frames + len(t) - 1, N_LATENT))
    out = signal.lfilter(hrf, [1.0], drive, axis=0)[len(t) - 1:]
    return out / out.std(0)


def scale_parser(doc: str) -> argparse.ArgumentParser:
    """The options of the 1-hour scale case the memory benchmarks share: --minutes, --runs,
    --voxels, --seed."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--voxels", type=int, default=0, help="keep the first N mask voxels")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run_lengths_of(minutes: float, n_runs: int) -> list:
    """Frames (TR 1 s) of ``minutes`` split into ``n_runs`` runs, the last taking the rest."""
    n_frames = int(round(minutes * 60))
    lengths = [n_frames // n_runs] * n_runs
    lengths[-1] += n_frames - sum(lengths)
    return lengths


def centre_runs(a, run_lengths):
    """Each run of a (T, n) centred, in place."""
    start = 0
    for n in run_lengths:
        a[start:start + n] -= a[start:start + n].mean(0)
        start += n


def bold(latent, run_lengths, carries, rng, chunk: int = 16384) -> np.ndarray:
    """(T, V) float32: AR(1) noise (phi 0.4), plus random latent mixtures where ``carries``
    (V,) bool, each run centred; built in voxel chunks (small temporaries)."""
    n_frames, n_vox = latent.shape[0], len(carries)
    out = np.empty((n_frames, n_vox), np.float32)
    for c in range(0, n_vox, chunk):
        e = rng.standard_normal((n_frames, min(chunk, n_vox - c)), dtype=np.float32)
        part = signal.lfilter([np.sqrt(1 - 0.4 ** 2)], [1.0, -0.4], e, axis=0)
        here = carries[c:c + chunk]
        load = rng.standard_normal((N_LATENT, int(here.sum()))) / np.sqrt(N_LATENT)
        part[:, here] += latent @ load
        out[:, c:c + chunk] = part
    centre_runs(out, run_lengths)
    return out


def build(opts, rng):
    """(voxels (T, V), x (T, N), run_lengths, {network: member (V,)}, noise) of the case."""
    from bids_vlm.analysis.networks import data_networks
    from bids_vlm.stats.autocorr import default_lags, demean_traces, lag_sums

    mask_img, n_vox = brain_mask(opts.voxels or None)
    masks, _, problem = data_networks("yeo7", mask_img, SPACE)
    if problem:
        raise SystemExit(problem)
    name = max(masks, key=lambda k: int(masks[k].sum()))
    member = np.asarray(masks[name], bool)
    run_lengths = run_lengths_of(opts.minutes, opts.runs)
    n_frames = sum(run_lengths)
    latent = latents(n_frames, rng)
    carries = member | (rng.random(n_vox) < 1 / 3)
    voxels = bold(latent, run_lengths, carries, rng)
    mix = rng.standard_normal((N_LATENT, opts.ans)) / np.sqrt(N_LATENT)
    x = (latent @ mix + rng.standard_normal((n_frames, opts.ans))).astype(np.float32)
    centre_runs(x, run_lengths)
    n_lags = default_lags(run_lengths)
    starts = np.cumsum([0] + run_lengths)
    noise = {"run_noise": [lag_sums(voxels[a:b], [b - a], n_lags)
                           for a, b in zip(starts[:-1], starts[1:])],
             "run_traces": np.stack([demean_traces([n], n_lags) for n in run_lengths]),
             "run_removed": np.ones(len(run_lengths), np.int64)}
    return voxels, x, run_lengths, {name: member}, noise


def main():
    parser = scale_parser(__doc__)
    parser.add_argument("--ans", type=int, default=768, help="ANs of the lesioned layer")
    parser.add_argument("--steps", default="0.5",
                        help="lesion steps, fractions of the ANs (comma-separated)")
    opts = parser.parse_args()
    from bids_vlm.analysis.lesion import FoldAssociation, network_lesions
    from bids_vlm.encoding.ridge import ALPHAS

    start = time.perf_counter()
    voxels, x, run_lengths, masks, noise = build(opts, np.random.default_rng(opts.seed))
    (name, member), = masks.items()
    held = voxels.nbytes + x.nbytes + sum(a.nbytes for a in noise["run_noise"])
    print(f"case: {sum(run_lengths)} frames in {len(run_lengths)} runs, {voxels.shape[1]} "
          f"voxels, {x.shape[1]} ANs; lesioned network '{name}' ({int(member.sum())} voxels); "
          f"built in {time.perf_counter() - start:.0f} s; the stage's arrays (BOLD, "
          f"regressors, noise lag sums) {held / 2**30:.2f} GiB")
    fractions = [float(f) for f in opts.steps.split(",")]
    key = ("image", 0)
    start = time.perf_counter()
    with PeakRSS() as rss:
        base = rss.sample()
        table = network_lesions({key: x}, {key: x}, {key: np.zeros(voxels.shape[1])}, voxels,
                                run_lengths, masks, fractions, seed=opts.seed,
                                settings=FoldAssociation(), noise=noise, alphas=ALPHAS,
                                backend="torch", max_inner_folds=5)
    seconds = time.perf_counter() - start
    print(table.to_string(index=False))
    if table.empty or not (table["n_ans_with_bn"] > 0).all():
        raise SystemExit("no fold found a BN in the network: the lesion did not refit")
    print(f"lesion: {seconds:.0f} s; resident memory {base / 2**30:.2f} GiB before, peak "
          f"{rss.peak / 2**30:.2f} GiB during")
    print(f"RESULT lesion_peak_memory_gb={rss.peak / 2**30:.2f} (target <= 16)")


if __name__ == "__main__":
    main()
