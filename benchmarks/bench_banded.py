"""The banded ridge across streams against himalaya's own solver of the same model, and against
the plain encoding of one layer, measured in the same run.

Two bands at a film's shapes (default: 2 runs x 300 frames, as a 10-minute movie at TR 1 s;
3,072 image features and 2,048 text features, the AN counts of a CLIP ViT-B/32 image and text
MLP layer; 30,000 voxels): each band is a mixture of shared smooth latents plus its own
HRF-smoothed noise (``bench_encoding.layer_data``), a third of the voxels carry the latents
over AR(1) noise, all z-scored within runs.

Timed, each after an untimed run:

- :func:`bids_vlm.encoding.banded.encode_banded` as ``workflows/nodes.py`` calls it (the
  configuration's alphas, band-weight draws and max_inner_folds; backend ``torch``);
- himalaya's ``MultipleKernelRidgeCV`` on the bands' precomputed linear kernels per fold (the
  solver bids_vlm used before; its held-out predictions are the reference the agreement is
  measured against);
- :func:`bids_vlm.encoding.ridge.encode_layer` of the image band alone (one layer's plain
  encoding, the unit the README counts the banded ridge in).

    python benchmarks/bench_banded.py [--voxels 30000] [--frames 300] [--runs 2]
        [--device cpu|cuda] [--no-reference]

The last line is ``RESULT banded_vs_himalaya=<ours / himalaya> (target <= 0.5)``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoding import _sync, layer_data  # noqa: E402


def timed(function, device):
    _sync(device)
    start = time.perf_counter()
    result = function()
    _sync(device)
    return time.perf_counter() - start, result


def main(argv=None):
    from bids_vlm.config import EncodingConfig
    from bids_vlm.encoding.banded import encode_banded, reference_split
    from bids_vlm.encoding.ridge import encode_layer, heldout_scores, run_splits

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--voxels", type=int, default=30000)
    p.add_argument("--frames", type=int, default=300, help="frames per run")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-reference", action="store_true", help="skip himalaya's solver")
    opts = p.parse_args(argv)
    runs = [opts.frames] * opts.runs
    cfg = EncodingConfig()
    backend = "torch_cuda" if opts.device == "cuda" else "torch"
    image, y = layer_data(runs, 3072, opts.voxels, seed=0)
    text, _ = layer_data(runs, 2048, 3, seed=1)
    bands = {"image": image, "text": text}
    print(f"regime: {opts.runs} runs x {opts.frames} frames, bands of 3072 + 2048 features, "
          f"{opts.voxels} voxels (a third with signal), {len(cfg.alphas)} alphas, "
          f"{cfg.banded_iterations} band weights, device {opts.device}, "
          f"{torch.get_num_threads()} torch threads")
    kwargs = dict(alphas=np.asarray(cfg.alphas), backend=backend, n_iter=cfg.banded_iterations,
                  max_inner_folds=cfg.max_inner_folds)
    encode_banded(bands, y[:, :2000], runs, **kwargs)  # untimed: caches, threads
    t_ours, res = timed(lambda: encode_banded(bands, y, runs, **kwargs), opts.device)
    t_plain, _ = timed(lambda: encode_layer(image, y, runs, alphas=np.asarray(cfg.alphas),
                                            backend=backend,
                                            max_inner_folds=cfg.max_inner_folds),
                       opts.device)
    k = opts.voxels // 3
    print(f"  encode_banded {t_ours:.1f} s ({t_ours / t_plain:.1f} x one layer's plain "
          f"encoding, {t_plain:.2f} s); held-out r: signal voxels {res.r[:k].mean():.3f}, "
          f"others {res.r[k:].mean():.3f}")
    if opts.no_reference:
        return
    t_ref, split = timed(lambda: reference_split(bands, y, runs, np.asarray(cfg.alphas),
                                                 cfg.banded_iterations, cfg.max_inner_folds,
                                                 backend=backend), opts.device)
    r_ref = heldout_scores(split.sum(0), y, run_splits(runs))[0]
    diff = np.abs(res.r - r_ref)
    print(f"  himalaya MultipleKernelRidgeCV {t_ref:.1f} s; max |r - r_ref| {diff.max():.1e}, "
          f"voxels within 1e-4: {np.mean(diff < 1e-4):.4f}")
    print(f"RESULT banded_vs_himalaya={t_ours / t_ref:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
