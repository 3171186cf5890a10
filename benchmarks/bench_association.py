"""Association throughput and memory, each against a reference measured in the same run.

1. vs a per-pair scipy loop (``scipy.stats.pearsonr``) on a subset of pairs, extrapolated to
   all pairs: target >= 100x.
2. Peak memory (resident set of a fresh process) of the association at --mem-frames x
   --mem-ans x --mem-voxels against ``memory_bound`` for its block size: target <= 1.
3. Throughput of one layer's association, statistics (the default exact null variance,
   selective BH-FDR, summaries, sparse entries) included, vs a bare float32 matrix product of
   the same shapes on the same device (the hardware ceiling), the best of --repeats timings of
   each, in two regimes. As in the pipeline's association stage, the voxels are prepared
   (normalised, their noise factors computed) once for all the layers of a unit, before the
   layers' associations (that preparation is timed once and printed beside), and the arrays
   of the significant entries are allocated once and reused by every layer:

   - sparse: independent random ANs, one AN's signal in 5% of the voxels (few significant
     pairs): target >= 0.8. This RESULT line is the last one.
   - dense, like a real layer: the ANs are mixtures (random loadings) of a few (--latents,
     default 12) smooth, autocorrelated latent time courses (white noise through a double-gamma
     HRF at 1 s) plus as much AN-specific noise; a third of the voxels carry other mixtures of
     the same latents over AR(1) noise (0.3), so that 5-20% of all AN x voxel pairs are
     significant (the measured share is printed; 13.9% at the default shapes): target >= 0.6.
     Same shapes and statistics as the sparse regime.

CPU by default (a few minutes on 2 cores); ``--device cuda`` for the GPU.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np
import torch
from scipy import signal, stats


def _data(n_frames, n_an, n_vox, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_frames, n_an), dtype=np.float32)
    y = rng.standard_normal((n_frames, n_vox), dtype=np.float32)
    y[:, : n_vox // 20] += 0.2 * x[:, [0]]  # some signal, so that BH has discoveries
    return x, y


def _dense_data(n_frames, n_an, n_vox, n_latent=12, seed=0, strength=1.0, own=1.0,
                phi=0.3):
    """Regressors (T, N) and voxels (T, V) with a layer's low-rank shared structure: ``n_latent``
    latent time courses (white noise through the canonical HRF at 1 s: smooth, autocorrelated),
    each AN a random mixture of them plus AN-specific white noise (SD ``own``); voxels AR(1)
    noise (``phi``), the first third plus ``strength`` times other random mixtures."""
    rng = np.random.default_rng(seed)
    t = np.arange(32.0)
    hrf = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    drive = rng.standard_normal((n_frames + len(t) - 1, n_latent))
    latent = signal.lfilter(hrf, [1.0], drive, axis=0)[len(t) - 1:]
    latent /= latent.std(0)
    mix = rng.standard_normal((n_latent, n_an)) / np.sqrt(n_latent)
    x = (latent @ mix).astype(np.float32)
    x += own * rng.standard_normal((n_frames, n_an), dtype=np.float32)
    e = rng.standard_normal((n_frames, n_vox), dtype=np.float32) * np.float32(np.sqrt(1 - phi ** 2))
    y = signal.lfilter([1.0], [1.0, -phi], e, axis=0).astype(np.float32)
    k = n_vox // 3
    load = rng.standard_normal((n_latent, k)) * (strength / np.sqrt(n_latent))
    y[:, :k] += (latent @ load).astype(np.float32)
    return x, y


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(opts, x, y):
    """Best of ``opts.repeats`` timings of the association of x (T, N) with y (T, V) and of the
    bare matrix product, taken in turns (so that a busy moment of the machine slows both
    alike), after one untimed run of each. Returns both and the share of significant pairs."""
    from bids_vlm.stats import associate, normalize_columns, prepare_voxels
    from bids_vlm.stats.entries import EntryBuffers
    from bids_vlm.stats.autocorr import lag_sums as _lag_sums
    from bids_vlm.stats.autocorr import default_lags, demean_traces

    runs = [opts.frames // 4] * 3 + [opts.frames - 3 * (opts.frames // 4)]
    xn = normalize_columns(x).to(opts.device)
    yn = normalize_columns(y).to(opts.device)
    # the voxels' noise lag sums and the cleaning's traces come from the cleaning stage in the
    # pipeline (not timed here, as there)
    n_lags = default_lags(runs)
    noise = dict(noise_sums=_lag_sums(y, runs, n_lags), lag_traces=demean_traces(runs, n_lags))
    # the voxels are prepared once for all the layers of a unit, as the association stage does
    # (bids_vlm.stats.layers.associate_layers); each layer's association is timed with them
    _sync(opts.device)
    start = time.perf_counter()
    voxels = prepare_voxels(y, run_lengths=runs, device=opts.device, **noise)
    _sync(opts.device)
    t_prep = time.perf_counter() - start
    # the significant entries' arrays are reused by every layer, as in the association stage
    entries = EntryBuffers()
    # one untimed run of each first (compilation, allocator, caches), as for every later layer
    res = associate(x, voxels, run_lengths=runs, block_size=opts.block_size,
                    device=opts.device, entries=entries)
    share = len(res.r) / (x.shape[1] * y.shape[1])
    del res
    (xn.T @ yn)
    t_assoc, t_mm = [], []
    for _ in range(opts.repeats):
        _sync(opts.device)
        start = time.perf_counter()
        associate(x, voxels, run_lengths=runs, block_size=opts.block_size, device=opts.device,
                  entries=entries)
        _sync(opts.device)
        t_assoc.append(time.perf_counter() - start)
        start = time.perf_counter()
        out = xn.T @ yn
        _sync(opts.device)
        t_mm.append(time.perf_counter() - start)
        del out
    print("  association runs: " + ", ".join(f"{t:.2f}" for t in t_assoc) + " s; matmul runs: "
          + ", ".join(f"{t:.2f}" for t in t_mm) + f" s; the voxels' preparation, once for all "
          f"layers: {t_prep:.2f} s")
    return min(t_assoc), min(t_mm), share


def scipy_loop(opts, t_assoc):
    from scipy import stats

    x, y = _data(opts.frames, 20, 100, seed=1)
    start = time.perf_counter()
    for i in range(x.shape[1]):
        for v in range(y.shape[1]):
            stats.pearsonr(x[:, i], y[:, v])
    per_pair = (time.perf_counter() - start) / (x.shape[1] * y.shape[1])
    return per_pair * opts.ans * opts.voxels / t_assoc


def _memory_child(args, queue):
    from bids_vlm.stats import associate

    n_frames, n_an, n_vox, block, device = args
    x, y = _data(n_frames, n_an, n_vox)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    res = associate(x, y, block_size=block, device=device)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    queue.put((base, peak, len(res.r), int(x.nbytes + y.nbytes), gpu, seconds))


def memory(opts):
    from bids_vlm.stats.association import memory_bound

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (opts.mem_frames, opts.mem_ans, opts.mem_voxels, opts.block_size, opts.device)
    proc = ctx.Process(target=_memory_child, args=(args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    bound = memory_bound(opts.mem_frames, opts.mem_ans, opts.mem_voxels, opts.block_size)
    return result, bound


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--ans", type=int, default=4096)
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--latents", type=int, default=12,
                        help="latent time courses of the dense regime")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timings of each (best kept; the shared host's speed varies by "
                             "about 20%% between moments)")
    parser.add_argument("--mem-frames", type=int, default=1000)
    parser.add_argument("--mem-ans", type=int, default=1024)
    parser.add_argument("--mem-voxels", type=int, default=200000)
    opts = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {opts.device}")

    (base, peak, n_entries, raw, gpu, seconds), bound = memory(opts)
    print(f"memory: {opts.mem_ans} ANs x {opts.mem_voxels} voxels x {opts.mem_frames} frames, "
          f"block {opts.block_size}: peak RSS {peak / 2**30:.2f} GiB (the process held "
          f"{base / 2**30:.2f} GiB before, of which {raw / 2**30:.2f} GiB the generated inputs "
          f"that the bound counts); bound {bound / 2**30:.2f} GiB; {n_entries} entries kept; "
          f"{seconds:.1f} s" + (f"; GPU peak {gpu / 2**30:.2f} GiB" if gpu else ""))
    shapes = f"{opts.ans} ANs x {opts.voxels} voxels x {opts.frames} frames"
    timings = {}
    for regime, data in (("sparse", _data), ("dense", _dense_data)):
        extra = {"n_latent": opts.latents} if regime == "dense" else {}
        print(f"throughput, {regime} regime, {shapes}:")
        t_assoc, t_mm, share = timings[regime] = throughput(
            opts, *data(opts.frames, opts.ans, opts.voxels, **extra))
        print(f"  association {t_assoc:.2f} s, bare float32 matmul {t_mm:.2f} s "
              f"({t_mm / t_assoc:.2f} x); significant pairs {100 * share:.3g}%")
    speedup = scipy_loop(opts, timings["sparse"][0])
    print(f"RESULT association_vs_scipy_loop={speedup:.0f} (target >= 100)")
    used = (gpu if gpu else peak - base) + raw
    print(f"RESULT association_peak_memory_vs_bound={used / bound:.2f} (target <= 1)")
    t_assoc, t_mm, _ = timings["dense"]
    print(f"RESULT association_dense_vs_sgemm={t_mm / t_assoc:.2f} (target >= 0.6)")
    t_assoc, t_mm, _ = timings["sparse"]
    print(f"RESULT association_vs_sgemm={t_mm / t_assoc:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
