"""Layer-wise encoding of one layer against its floor, measured in the same run.

One layer at a realistic shape (default: 2 runs x 300 frames, as a 10-minute movie at TR 1 s;
3,072 features, the AN count of a CLIP ViT-B/32 image MLP layer; 30,000 voxels): the features
are mixtures (random loadings) of a few (--latents) smooth, autocorrelated HRF-convolved latent
time courses plus as much HRF-smoothed AN-specific noise (a real layer's low-rank,
autocorrelated structure); a third of the voxels carry other mixtures of the same latents over
AR(1) noise. Features and voxels are z-scored within runs (as the cleaning leaves them).

Timed: :func:`bids_vlm.encoding.ridge.encode_layer` exactly as ``workflows/nodes.py``
``encode_node`` calls it (the configuration's alphas and max_inner_folds; backend ``torch``,
or ``torch_cuda`` with the voxels already on the GPU; the held-out r's z from the voxels' noise
lag sums), against the floor: the bare float32 products X_train^T Y_train of its
leave-one-run-out folds (torch matmul on the same device, data already there), summed over the
folds. Each is timed --repeats times after one untimed run, in turns, so that a busy moment of
a shared machine slows both; the best of each is kept.

    python benchmarks/bench_encoding.py [--voxels 30000] [--features 3072] [--frames 300]
        [--runs 2] [--device cpu|cuda] [--threads N] [--check]

Expected ratio: the inner cross-validation costs n_alphas x (inner test frames) x (inner
training frames) multiply-adds per voxel and inner fold, the floor F x (training frames) per
fold: about 0.7 x the floor for 2 runs (one training run of 300 frames, five contiguous inner
folds), about 1.8 x for 4 runs (three inner folds of 300 test frames); the held-out prediction,
the scores and the z's autocorrelations add a few tenths.

--check also runs the himalaya reference (RidgeCV / KernelRidgeCV per fold, as encode_layer
did before its own solver) on the same data and prints the agreement: max |r| difference and
the voxel x fold alphas that differ. The last line is
``RESULT encoding_vs_products=<time / floor> (target <= 3)``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import signal, stats


def _hrf_filter(a, rng_len=32):
    t = np.arange(float(rng_len))
    hrf = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    return signal.lfilter(hrf, [1.0], a, axis=0)[rng_len - 1:]


def _zscore_runs(a, runs):
    out = np.empty(a.shape, np.float32)
    start = 0
    for n in runs:
        part = a[start:start + n]
        out[start:start + n] = (part - part.mean(0)) / part.std(0)
        start += n
    return out


def layer_data(runs, n_features, n_vox, n_latent=16, strength=0.5, phi=0.3, seed=0):
    """x (T, F) features and y (T, V) voxels, both z-scored within runs (see module doc)."""
    rng = np.random.default_rng(seed)
    n_frames = sum(runs)
    latent = _hrf_filter(rng.standard_normal((n_frames + 31, n_latent)))
    latent /= latent.std(0)
    own = _hrf_filter(rng.standard_normal((n_frames + 31, n_features)).astype(np.float32))
    own /= own.std(0)
    x = latent @ (rng.standard_normal((n_latent, n_features)) / np.sqrt(n_latent)) + own
    e = rng.standard_normal((n_frames, n_vox), dtype=np.float32) * np.float32(np.sqrt(1 - phi ** 2))
    y = signal.lfilter([1.0], [1.0, -phi], e, axis=0).astype(np.float32)
    k = n_vox // 3
    load = rng.standard_normal((n_latent, k)) * (strength / np.sqrt(n_latent))
    y[:, :k] += (latent @ load).astype(np.float32)
    return _zscore_runs(x, runs), _zscore_runs(y, runs)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def floor_time(x, y, runs, device):
    """One pass of the bare float32 products X_train^T Y_train of every outer fold (s)."""
    from bids_vlm.encoding.ridge import run_splits

    splits = run_splits(runs)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    total = 0.0
    for k in range(len(splits)):  # one fold's copies at a time (12 at once: 37 GB at 1 hour)
        train = torch.from_numpy(np.concatenate([r for i, r in enumerate(splits) if i != k]))
        xk, yk = xt[train.to(device)].T.contiguous(), yt[train.to(device)].contiguous()
        _sync(device)
        start = time.perf_counter()
        out = xk @ yk
        _sync(device)
        total += time.perf_counter() - start
        del out, xk, yk
    return total


def main(argv=None):
    from bids_vlm.config import EncodingConfig
    from bids_vlm.stats.autocorr import default_lags, demean_traces
    from bids_vlm.stats.autocorr import lag_sums
    from bids_vlm.encoding.ridge import encode_layer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--voxels", type=int, default=30000)
    p.add_argument("--features", type=int, default=3072)
    p.add_argument("--frames", type=int, default=300, help="frames per run")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--latents", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--alpha-cv", default="nested", choices=["nested", "shared"],
                   help="each held-out run's alphas by inner folds of the other runs, or "
                        "once by inner folds over every run (bids_vlm --alpha-cv)")
    p.add_argument("--check", action="store_true",
                   help="also run the himalaya reference and print the agreement")
    opts = p.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    runs = [opts.frames] * opts.runs
    cfg = EncodingConfig()
    backend = "torch_cuda" if opts.device == "cuda" else "torch"
    x, y = layer_data(runs, opts.features, opts.voxels, opts.latents)
    n_lags = default_lags(runs)
    # as encode_node: the voxels' noise lag sums come from the cleaning stage (not timed)
    null = dict(with_z=True, noise_sums=lag_sums(y, runs, n_lags),
                lag_traces=demean_traces(runs, n_lags), n_lags=n_lags)
    kwargs = dict(alphas=np.asarray(cfg.alphas), backend=backend,
                  max_inner_folds=cfg.max_inner_folds, alpha_cv=opts.alpha_cv, **null)
    n_train = sum(runs) - opts.frames
    print(f"regime: {opts.runs} runs x {opts.frames} frames, {opts.features} features "
          f"({'kernel' if opts.features > n_train else 'primal'} form: {n_train} training "
          f"frames per fold), {opts.voxels} voxels (a third with signal), {len(cfg.alphas)} "
          f"alphas ({opts.alpha_cv} choice), device {opts.device}, {torch.get_num_threads()} "
          "torch threads")

    # as encode_node: on a GPU the voxels are there already (copied once for all layers)
    targets = torch.from_numpy(y).to(opts.device) if opts.device == "cuda" else y
    res = encode_layer(x, targets, runs, **kwargs)  # untimed: allocator, caches, CUDA context
    floor_time(x, y, runs, opts.device)
    t_enc, t_floor = [], []
    for _ in range(opts.repeats):
        _sync(opts.device)
        start = time.perf_counter()
        res = encode_layer(x, targets, runs, **kwargs)
        _sync(opts.device)
        t_enc.append(time.perf_counter() - start)
        t_floor.append(floor_time(x, y, runs, opts.device))
    print("  encode_layer runs: " + ", ".join(f"{t:.2f}" for t in t_enc) + " s; products: "
          + ", ".join(f"{t:.3f}" for t in t_floor) + " s")
    k = opts.voxels // 3
    print(f"  held-out r: signal voxels mean {res.r[:k].mean():.3f}, others mean "
          f"{res.r[k:].mean():.3f}; z > 1.645 in {np.mean(res.z[:k] > 1.645):.2f} / "
          f"{np.mean(res.z[k:] > 1.645):.3f}")
    if opts.check and opts.alpha_cv == "nested":
        check(x, y, runs, res, kwargs)
    elif opts.check:
        print("  --check compares with himalaya's nested choice: run it with --alpha-cv nested")
    t, f = min(t_enc), min(t_floor)
    print(f"encode_layer {t:.2f} s; floor (X_train^T Y_train of {opts.runs} folds) {f:.3f} s")
    print(f"RESULT encoding_vs_products={t / f:.2f} (target <= 3)")


def check(x, y, runs, res, kwargs):
    """Agreement with the himalaya reference of every fold (untimed): r of encode_layer
    against r of himalaya's predictions, and each fold's alphas (fold_predict) against
    himalaya's."""
    from bids_vlm.encoding.ridge import fold_predict, heldout_scores, himalaya_backend, run_splits
    from bids_vlm.encoding.ridge_solver import reference_fold_predict

    splits = run_splits(runs)
    pred = np.zeros(y.shape, np.float32)
    same = np.ones(y.shape[1], bool)
    n_diff, seconds = 0, 0.0
    with himalaya_backend(kwargs["backend"]):
        for k, test in enumerate(splits):
            start = time.perf_counter()
            pred[test], ref = reference_fold_predict(x, y, splits, k, kwargs["alphas"],
                                                     kwargs["max_inner_folds"])
            seconds += time.perf_counter() - start
            ours = fold_predict(x, y, splits, k, kwargs["alphas"], kwargs["max_inner_folds"])[1]
            agree = np.isclose(ours, ref, rtol=1e-4)  # himalaya returns exp(log(alpha)) in float32
            same &= agree
            n_diff += int((~agree).sum())
    diff = np.abs(res.r - heldout_scores(pred, y, splits)[0])
    print(f"  himalaya reference: {seconds:.2f} s; max |r - r_ref| {diff.max():.1e} (mean "
          f"{diff.mean():.1e}; {diff[same].max() if same.any() else np.nan:.1e} where every "
          f"fold's alpha agrees); voxel x fold alphas that differ: {n_diff} of "
          f"{y.shape[1] * len(splits)} ({n_diff / (y.shape[1] * len(splits)):.3%})")


if __name__ == "__main__":
    main()
