"""The encoding stage's peak memory at the paper's 1-hour scale (issue 13: a 1-hour movie within
16 GB), on the files the stage reads, against that target.

The end-to-end benchmark (``bench_participant.py --minutes 60 --runs 12``) takes hours in the
encoding on 2 cores (README, "The paper's scale"), so this runs the stage's own function,
:func:`bids_vlm.encoding.layers.encode_layers`, as ``workflows/nodes.py`` ``encode_node`` calls
it, on files written as the clean and regressors stages write them:

- a movie of ``--minutes`` (default 60) in ``--runs`` runs (default 12) at TR 1 s;
- nilearn's MNI152 2 mm brain mask (235,375 voxels; ``--voxels N`` keeps the first N);
- each run's cleaned BOLD (n, V) float32 ``_cleaned.npy`` and its noise lag sums
  (K + 1, V) float32 ``_noise.npy``: AR(1) noise (phi 0.4), a third of the voxels carrying
  random mixtures of 8 HRF-smoothed latent courses, each run centred;
- ``regressors.h5`` with ``--layers`` layers per stream (default 1): image layers of 3,072 ANs
  and text layers of 2,048 (CLIP ViT-B/32's MLP widths), mixtures of the same latents plus
  their own noise, each run centred; the cleaning's attributes (run lengths, lag traces, run
  signatures: all different, or with ``--repeat`` every run the same stimulus, so that the
  noise ceiling runs too).

The configuration is the default but for ``--alpha-cv`` (default ``shared``, the choice the
README gives for 12 runs on a CPU; ``nested`` takes about 20 minutes a layer on 2 cores) and
``--banded-layers`` (default ``none``: the banded ridge's 12 folds x 20 band weights take hours
on 2 cores). The banded ridge's memory is measured apart (``--banded-folds``, default 1): after
the stage, the cleaned runs are read again as the stage reads them and the banded ridge of the
last layer index is run for that many outer folds with ``--banded-iterations`` band weights
(default 2), as :func:`bids_vlm.encoding.banded.encode_banded` runs each fold, one after the
other (the peak does not grow with the number of folds; the refit keeps one decomposition per
band weight that a voxel chose, whose size is printed so that the 20 weights' can be added).

Each part runs in a process of its own, started once the case is written (as a Nipype node
starts in a fresh worker), and its peak is that process's largest resident set (the kernel's
``ru_maxrss`` of the child, the data the stage loads included). Ends with ``RESULT
encode_peak_memory_gb=<peak> (target <= 16)``, the larger of the two parts' peaks plus the
refit's decompositions for the band weights the banded part did not draw. About 17 minutes on
2 cores at the default size with ``--repeat`` (2026-12-07: the case written in 1.5 minutes, the
stage's two layers and the ceiling 9, the banded fold 5.5; peak 6.27 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lesion import (PeakRSS, bold, centre_runs, latents, run_lengths_of,  # noqa: E402
                         scale_parser)
from bench_participant import brain_mask  # noqa: E402

WIDTHS = {"image": 3072, "text": 2048}  # ANs of a CLIP ViT-B/32 MLP layer of each stream


def write_case(opts, folder: Path, rng) -> int:
    """The clean and regressors stages' files for the case in ``folder`` (listed in its
    ``case.json``) -> the number of voxels."""
    from bids_vlm.stats.autocorr import default_lags, demean_traces, lag_sums

    _, n_vox = brain_mask(opts.voxels or None)
    lengths = run_lengths_of(opts.minutes, opts.runs)
    latent = latents(sum(lengths), rng)
    voxels = bold(latent, lengths, rng.random(n_vox) < 1 / 3, rng)
    n_lags = default_lags(lengths)
    starts = np.cumsum([0] + lengths)
    cleaned = []
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:]), 1):
        path = folder / f"sub-01_task-movie_run-{i}_cleaned.npy"
        np.save(path, voxels[a:b])
        np.save(str(path).replace("_cleaned.npy", "_noise.npy"),
                lag_sums(voxels[a:b], [b - a], n_lags).astype(np.float32))
        cleaned.append(str(path))
    del voxels
    regressors = folder / "regressors.h5"
    traces = np.stack([demean_traces([n], n_lags) for n in lengths])
    with h5py.File(regressors, "w") as out:
        out.attrs["model"] = "clip-vit-b-32"
        out.attrs["run_lengths"] = lengths
        out.attrs["run_removed"] = np.ones(len(lengths), np.int64)
        out.attrs["n_removed"] = len(lengths)
        out.attrs["lag_traces"] = traces.sum(0)
        out.attrs["run_lag_traces"] = traces
        out.attrs["run_signatures"] = ["same" if opts.repeat else f"run{i}"
                                       for i in range(len(lengths))]
        for stream, width in WIDTHS.items():
            out[f"nuisance/presence/{stream}"] = np.ones((sum(lengths), 1), np.float32)
            for layer in range(1, opts.layers + 1):
                mix = rng.standard_normal((latent.shape[1], width)) / np.sqrt(latent.shape[1])
                x = (latent @ mix + rng.standard_normal((len(latent), width))).astype(np.float32)
                centre_runs(x, lengths)
                out[f"{stream}/{layer:02d}"] = x
    (folder / "case.json").write_text(json.dumps({"regressors": str(regressors),
                                                   "cleaned": cleaned}))
    return n_vox


def stage(regressors, cleaned, opts, folder: Path) -> None:
    """encode_layers as the stage runs it; prints its time and memory."""
    from bids_vlm.config import AnalysisConfig, EncodingConfig
    from bids_vlm.encoding.layers import encode_layers

    config = AnalysisConfig(encoding=EncodingConfig(alpha_cv=opts.alpha_cv,
                                                    banded_layers=(opts.banded_layers,)))
    start, base = time.perf_counter(), PeakRSS().sample()
    encode_layers(regressors, cleaned, config, opts.device, folder / "encoding.h5")
    with h5py.File(folder / "encoding.h5") as f:
        layers = [f"{s}/{k}" for s in WIDTHS for k in f.get(s, {})]
        r = {key: float(np.median(f[f"{key}/r"][()])) for key in layers}
        ceiling = "with" if "noise_ceiling" in f else "without"
    print(f"stage: {len(layers)} layers (alpha_cv {opts.alpha_cv}, banded {opts.banded_layers})"
          f" in {time.perf_counter() - start:.0f} s; median held-out r "
          f"{', '.join(f'{k} {v:.3f}' for k, v in r.items())}, {ceiling} noise ceiling; resident "
          f"memory {base / 2**30:.2f} GiB before")


def banded(regressors, cleaned, opts, folder: Path) -> None:
    """The banded ridge of the last layer index for --banded-folds outer folds, on the data as
    the stage holds them; prints its time, memory and the size of one band weight's refit."""
    import torch

    from bids_vlm.design.cleaned_runs import load_cleaned
    from bids_vlm.encoding.banded import _Scores, _linear_kernel, band_weights, banded_fold
    from bids_vlm.encoding.folds import run_splits
    from bids_vlm.encoding.ridge import ALPHAS

    start, base = time.perf_counter(), PeakRSS().sample()
    with h5py.File(regressors) as regs:
        voxels = load_cleaned(cleaned)
        lengths = [int(n) for n in regs.attrs["run_lengths"]]
        runs = run_splits(lengths)
        layer = f"{opts.layers:02d}"
        kernels = torch.stack([_linear_kernel(regs[f"{s}/{layer}"][()], "cpu") for s in WIDTHS])
        g = band_weights(opts.banded_iterations, len(WIDTHS), 0)
        scores = _Scores(len(WIDTHS), runs, voxels.shape[1])
        for k in range(opts.banded_folds):
            for begin, pred in banded_fold(kernels, voxels, runs, k, g, ALPHAS, 5,
                                             torch.device("cpu")):
                scores.add(k, begin, pred, voxels[runs[k], begin:begin + pred.shape[2]])
    print(f"banded: {opts.banded_folds} fold(s) x {opts.banded_iterations} band weights in "
          f"{time.perf_counter() - start:.0f} s; resident memory {base / 2**30:.2f} GiB before; "
          f"the refit holds {refit_bytes(lengths) / 2**20:.1f} MiB per band weight chosen")


def refit_bytes(lengths) -> int:
    """What the banded refit keeps per band weight chosen (float32 U, D and the weighted cross
    kernels of the largest training set)."""
    from bids_vlm.encoding.ridge import ALPHAS

    n_te = min(lengths)
    n_tr = sum(lengths) - n_te
    return 4 * (n_tr * n_tr + n_tr * len(ALPHAS) + len(WIDTHS) * n_te * n_tr)


def child_peak(part: str, folder: Path) -> int:
    """Runs this script's ``part`` on the case in ``folder`` in a new process (the same
    options); returns its peak resident memory (bytes)."""
    args = [a for a in sys.argv[1:]]
    child = subprocess.Popen([sys.executable, __file__, *args, "--part", part,
                              "--case", str(folder)])
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"the {part} part failed (wait status {status})")
    peak = usage.ru_maxrss * 1024
    print(f"{part}: peak resident memory {peak / 2**30:.2f} GiB", flush=True)
    return peak


def main():
    parser = scale_parser(__doc__)
    parser.add_argument("--layers", type=int, default=1, help="layers per stream")
    parser.add_argument("--alpha-cv", default="shared", choices=("nested", "shared"))
    parser.add_argument("--banded-layers", default="none")
    parser.add_argument("--banded-folds", type=int, default=1,
                        help="outer folds of the banded ridge measured apart (0: none)")
    parser.add_argument("--banded-iterations", type=int, default=2)
    parser.add_argument("--repeat", action="store_true",
                        help="every run the same stimulus (the noise ceiling runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None, help="where the case's files go (default "
                        "a temporary folder, removed at the end)")
    parser.add_argument("--part", choices=("stage", "banded"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.part:  # in the child process
        case = json.loads((Path(opts.case) / "case.json").read_text())
        {"stage": stage, "banded": banded}[opts.part](case["regressors"], case["cleaned"], opts,
                                                      Path(opts.case))
        return
    from bids_vlm.config import EncodingConfig

    with tempfile.TemporaryDirectory(dir=opts.workdir) as tmp:
        start = time.perf_counter()
        n_vox = write_case(opts, Path(tmp), np.random.default_rng(opts.seed))
        lengths = run_lengths_of(opts.minutes, opts.runs)
        print(f"case: {sum(lengths)} frames in {len(lengths)} runs, {n_vox} voxels "
              f"(cleaned BOLD {sum(lengths) * n_vox * 4 / 2**30:.2f} GiB), {opts.layers} "
              f"layer(s) per stream ({', '.join(f'{s} {w} ANs' for s, w in WIDTHS.items())}); "
              f"written in {time.perf_counter() - start:.0f} s", flush=True)
        peak = child_peak("stage", Path(tmp))
        if opts.banded_folds:
            undrawn = max(0, EncodingConfig().banded_iterations - opts.banded_iterations)
            extra = refit_bytes(lengths) * undrawn
            peak = max(peak, child_peak("banded", Path(tmp)) + extra)
            print(f"banded, with the refit of all {EncodingConfig().banded_iterations} band "
                  f"weights: + {extra / 2**30:.2f} GiB")
    print(f"RESULT encode_peak_memory_gb={peak / 2**30:.2f} (target <= 16)")


if __name__ == "__main__":
    main()
