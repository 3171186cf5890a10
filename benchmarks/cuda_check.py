"""Every CUDA path of bids_vlm against its CPU (or dense) reference, in 1-2 minutes on a GPU.

Run on a machine with a GPU: ``python benchmarks/cuda_check.py`` (``--device cpu`` runs the
same checks with the CPU as the "device": a dry run of the script, not a check). Checks:

1. Extraction (:func:`bids_vlm.models.extract`): tiny-clip (image, text) and tiny-meter (image,
   text, cross-image and cross-text on pair items), largest |CPU - CUDA| activation over the
   largest activation; bf16 autocast on CUDA against fp32 (correlation of the activations).
2. Association (:func:`bids_vlm.encoding.associate`), fdr_scope "an" and "all":
   a. streamed on CUDA for several block sizes vs a dense float64 reference (every r, z and BH
      decision at once; frames independent, so that the reference is a few lines);
   b. CUDA vs CPU (Bartlett-corrected z): summaries and significant entries; on CUDA, other
      block sizes against the default;
   c. CUDA association time / bare float32 matrix product time of the same shapes.
   Entries that differ only because their |z| lies within 1e-3 (relative) of BH's critical
   |z| (float32 rounding) are counted apart as borderline; the others must be none.
3. Ridge (:mod:`bids_vlm.encoding.ridge`, himalaya): torch_cuda vs numpy held-out r for
   RidgeCV (features < frames), KernelRidgeCV (features > frames) and banded GroupRidgeCV.

Summaries must also agree with the entries (counts per AN and voxel). Each check prints
``RESULT name=value (target op value)``; a check that raises is reported and the others run;
the last line counts the failures.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import traceback

import numpy as np
import torch

from bids_vlm.config import ModelConfig
from bids_vlm.stats import associate, normalize_columns
from bids_vlm.models import extract, load_model
from bids_vlm.inputs.stimuli import pair_item

TEXTS = ["a photo of a face", "a photo of a house", "a cat on a chair", "scissors", ""]
FAILED = []


def result(name, value, op, target, fmt=".3g"):
    ok = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
    if not ok:
        FAILED.append(name)
    print(f"RESULT {name}={value:{fmt}} (target {op} {target})", flush=True)


def sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def check_extraction(dev):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="cuda_check_")
    images = []
    for i in range(5):
        images.append(f"{folder}/{i}.png")
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(images[-1])
    pairs = [pair_item(images[0], TEXTS[0]), pair_item(images[1], None),
             pair_item(None, TEXTS[2]), pair_item(images[3], TEXTS[3])]
    clip_items = {"image": images, "text": TEXTS}
    meter_items = {"image": images, "text": TEXTS, "cross-image": pairs, "cross-text": pairs}
    for name, items in (("tiny-clip", clip_items), ("tiny-meter", meter_items)):
        model = load_model(name, ModelConfig())
        # batches of 2: several batches, with padding that differs between them
        cpu = extract(model, items, ModelConfig(), progress=False, device="cpu", batch_size=2)
        gpu = extract(model, items, ModelConfig(), progress=False, device=dev, batch_size=2)
        assert sorted(cpu) == sorted(gpu) and len(cpu) > 3
        diff = max(float(np.abs(cpu[k] - gpu[k]).max()) for k in cpu)
        scale = max(float(np.abs(cpu[k]).max()) for k in cpu)
        print(f"extraction {name}: {len(cpu)} layers, max |CPU - {dev}| = {diff:.2e}, "
              f"activations up to {scale:.2f} (cuDNN TF32 convolutions: "
              f"{torch.backends.cudnn.allow_tf32})")
        result(f"extraction_{name.replace('-', '_')}_max_rel_diff", diff / scale, "<=", 1e-2,
               ".1e")
        if dev.startswith("cuda"):
            half = extract(model, items, ModelConfig(precision="bf16"), device=dev, batch_size=2,
                           progress=False)
            corr = min(np.corrcoef(gpu[k].ravel(), half[k].ravel())[0, 1] for k in gpu)
            result(f"extraction_{name.replace('-', '_')}_bf16_min_corr", corr, ">=", 0.99, ".4f")


def problem(n_frames, n_an, n_vox, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_frames, n_an), dtype=np.float32)
    y = rng.standard_normal((n_frames, n_vox), dtype=np.float32)
    y[:, : n_vox // 10] += 0.25 * x[:, [0]]
    y[:, n_vox // 10: n_vox // 5] -= 0.15 * x[:, [1]]
    y[:, -50:] += 0.2 * x[:, 2:52]  # 50 ANs with one voxel each, near BH's threshold
    return x, y


def dense_reference(x, y, q, scope, dev):
    """r (N, V) and BH decisions with frames independent, all pairs at once, in float64."""
    def unit(a):
        a = torch.from_numpy(a).to(dev, torch.float64)
        a = a - a.mean(0)
        return a / a.norm(dim=0)

    r = unit(x).T @ unit(y)
    z = torch.atanh(r) * np.sqrt(x.shape[0] - 3)
    p = 2 * torch.special.ndtr(-z.abs())
    flat = p.reshape(1, -1) if scope == "all" else p
    srt = flat.sort(dim=1).values
    m = srt.shape[1]
    ok = srt <= q * torch.arange(1, m + 1, device=dev, dtype=torch.float64) / m
    k = torch.where(ok, torch.arange(1, m + 1, device=dev), 0).amax(1)
    cut = torch.where(k > 0, srt.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0], -1.0)
    sig = (flat <= cut[:, None]).reshape(p.shape)
    return r.cpu().numpy(), sig.cpu().numpy()


def borderline(z, thr):
    """|z| within 1e-3 (relative) of a finite BH critical |z|: float32 rounding decides."""
    return bool(np.isfinite(thr) and abs(abs(z) - thr) <= 1e-3 * thr)


def inconsistent(res):
    """ANs and voxels whose summary counts differ from the significant entries' counts."""
    per_an = np.bincount(res.an_index, minlength=len(res.n_pos))
    per_vox = np.bincount(res.voxel_index, minlength=len(res.bn_count))
    return int((res.n_pos + res.n_neg != per_an).sum() + (res.bn_count != per_vox).sum())


def entry_diff(a, b):
    """(entries in one result only, of them not borderline (plus inconsistent summaries),
    largest |r| difference of common entries, best_r and peak_r)."""
    ea = dict(zip(zip(a.an_index.tolist(), a.voxel_index.tolist()), zip(a.z, a.r)))
    eb = dict(zip(zip(b.an_index.tolist(), b.voxel_index.tolist()), zip(b.z, b.r)))
    only = [(k, res, e[k][0]) for e, o, res in ((ea, eb, a), (eb, ea, b)) for k in e if k not in o]
    hard = sum(not borderline(z, res.z_threshold[k[0]]) for k, res, z in only)
    r_diff = max([abs(ea[k][1] - eb[k][1]) for k in ea if k in eb] +
                 [np.abs(a.best_r - b.best_r).max(), np.abs(a.peak_r - b.peak_r).max()])
    return len(only), hard + inconsistent(a) + inconsistent(b), float(r_diff)


def check_association(dev, opts):
    x, y = problem(600, opts.small_ans, opts.small_voxels, 1)
    z_of = np.sqrt(x.shape[0] - 3)
    for scope in ("an", "all"):
        r, sig = dense_reference(x, y, 0.05, scope, dev)
        want = set(zip(*np.nonzero(sig)))
        worst = (0, 0.0)
        for block in (1, 7, 64, opts.small_ans):
            res = associate(x, y, block_size=block, device=dev, autocorr="none", fdr_scope=scope)
            only = set(zip(res.an_index.tolist(), res.voxel_index.tolist())) ^ want
            hard = inconsistent(res) + sum(
                not borderline(np.arctanh(r[k]) * z_of, res.z_threshold[k[0]]) for k in only)
            r_diff = max(np.abs(res.r - r[res.an_index, res.voxel_index]).max(initial=0),
                         np.abs(res.best_r - r[np.abs(r).argmax(0), np.arange(r.shape[1])]).max(),
                         np.abs(res.peak_r - r[np.arange(len(r)), np.abs(r).argmax(1)]).max())
            print(f"  {scope} block {block}: {len(res.r)} entries, {len(only)} differ from the "
                  f"reference ({hard} not borderline), max |r - r dense| {r_diff:.1e}")
            worst = (max(worst[0], hard), max(worst[1], float(r_diff)))
        print(f"association streamed ({dev}) vs dense float64, fdr_scope {scope}, frames "
              f"independent: {opts.small_ans} ANs x {opts.small_voxels} voxels x 600 frames, "
              f"{len(want)} significant entries in the reference")
        result(f"assoc_{scope}_streamed_vs_dense_hard_diffs", worst[0], "==", 0)
        result(f"assoc_{scope}_streamed_vs_dense_max_r_diff", worst[1], "<=", 1e-4, ".1e")

    x, y = problem(1000, opts.ans, opts.voxels, 2)
    runs = [250] * 4
    for scope in ("an", "all"):
        start = time.perf_counter()
        cpu = associate(x, y, block_size=256, device="cpu", run_lengths=runs, fdr_scope=scope)
        t_cpu = time.perf_counter() - start
        gpu = associate(x, y, block_size=opts.block, device=dev, run_lengths=runs, fdr_scope=scope)
        n_only, hard, r_diff = entry_diff(cpu, gpu)
        print(f"association CPU ({t_cpu:.1f} s) vs {dev}, bartlett, fdr_scope {scope}: "
              f"{opts.ans} ANs x {opts.voxels} voxels x 1000 frames: {len(cpu.r)} / {len(gpu.r)} "
              f"entries, {n_only} differ ({hard} not borderline), max |r diff| {r_diff:.1e}")
        result(f"assoc_{scope}_cpu_vs_device_hard_diffs", hard, "==", 0)
        result(f"assoc_{scope}_cpu_vs_device_max_r_diff", r_diff, "<=", 1e-4, ".1e")
        for block in (32, 1024):
            other = associate(x, y, block_size=block, device=dev, run_lengths=runs,
                              fdr_scope=scope)
            n_only, hard, r_diff = entry_diff(gpu, other)
            print(f"  {dev} block {block} vs {opts.block}: {n_only} entries differ ({hard} not "
                  f"borderline), max |r diff| {r_diff:.1e}")
            result(f"assoc_{scope}_block{block}_vs_block{opts.block}_hard_diffs", hard, "==", 0)

    associate(x[:, :64], y, device=dev, run_lengths=runs)  # warm-up
    sync(dev)
    start = time.perf_counter()
    associate(x, y, block_size=opts.block, device=dev, run_lengths=runs)
    sync(dev)
    t_assoc = time.perf_counter() - start
    xn, yn = normalize_columns(x).to(dev), normalize_columns(y).to(dev)
    (xn[:, :64].T @ yn)  # warm-up
    sync(dev)
    start = time.perf_counter()
    for s in range(0, opts.ans, opts.block):  # the product alone, block by block
        (xn[:, s:s + opts.block].T @ yn).abs_().amax()
    sync(dev)
    t_mm = time.perf_counter() - start
    print(f"association on {dev}: {t_assoc:.3f} s, bare float32 matmul {t_mm:.3f} s")
    result("assoc_device_vs_matmul", t_mm / t_assoc, ">=", 0.8, ".3f")


def check_ridge(dev):
    from bids_vlm.encoding.banded import encode_banded
    from bids_vlm.encoding.ridge import encode_layer

    backend = "torch_cuda" if dev.startswith("cuda") else "torch"
    rng = np.random.default_rng(3)
    runs = [150] * 4
    for n_feat in (200, 800):  # RidgeCV, KernelRidgeCV (more features than training frames)
        x = rng.standard_normal((600, n_feat))
        y = x[:, :20] @ rng.standard_normal((20, 1000)) / 5 + rng.standard_normal((600, 1000))
        cpu = encode_layer(x, y, runs, backend="numpy")
        start = time.perf_counter()
        gpu = encode_layer(x, y, runs, backend=backend)
        seconds = time.perf_counter() - start
        gap = np.abs(cpu.r - gpu.r)
        same = cpu.alpha == gpu.alpha  # float32 vs float64 may pick another alpha at a near-tie
        diff = float(gap[same].max()) if same.any() else float("inf")
        print(f"ridge {n_feat} features x 1000 voxels: max |r numpy - r {backend}| = "
              f"{gap.max():.1e} over all voxels, {diff:.1e} where the chosen alpha agrees; "
              f"alpha differs in {int((~same).sum())} voxels ({int((gap > 1e-3).sum())} with "
              f"|r diff| > 1e-3); {backend} {seconds:.1f} s, median r {np.median(cpu.r):.2f}")
        result(f"ridge_{n_feat}_features_max_r_diff_same_alpha", diff, "<=", 1e-3, ".1e")
        # where float32 picks another alpha at a near-tie, r moves little: few voxels by > 1e-3
        result(f"ridge_{n_feat}_features_share_r_diff_over_1e-3", float((gap > 1e-3).mean()),
               "<=", 0.01, ".3f")
    a, b = rng.standard_normal((600, 30)), rng.standard_normal((600, 30))
    y = a[:, :5].sum(1, keepdims=True) + 0.5 * b[:, :5].sum(1, keepdims=True) \
        + 2 * rng.standard_normal((600, 300))
    cpu = encode_banded({"a": a, "b": b}, y, runs, backend="numpy", n_iter=10)
    gpu = encode_banded({"a": a, "b": b}, y, runs, backend=backend, n_iter=10)
    diff = max(float(np.abs(cpu.r - gpu.r).max()),
               max(float(np.abs(cpu.split_r2[k] - gpu.split_r2[k]).max()) for k in cpu.split_r2))
    print(f"banded ridge 2 x 30 features x 300 voxels: max |numpy - {backend}| of r and split "
          f"R^2 = {diff:.1e}")
    result("ridge_banded_max_diff", diff, "<=", 1e-2, ".1e")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ans", type=int, default=2048)
    parser.add_argument("--voxels", type=int, default=30000)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--small-ans", type=int, default=96)
    parser.add_argument("--small-voxels", type=int, default=5000)
    opts = parser.parse_args()
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu for a dry run)")
    name = torch.cuda.get_device_name(0) if opts.device.startswith("cuda") else "CPU dry run"
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    steps = {"extraction": lambda: check_extraction(opts.device),
             "association": lambda: check_association(opts.device, opts),
             "ridge": lambda: check_ridge(opts.device)}
    for name, step in steps.items():
        start = time.perf_counter()
        try:
            step()
        except Exception:  # report it and go on with the other checks
            traceback.print_exc()
            FAILED.append(f"{name}_raised")
        print(f"  ({name}: {time.perf_counter() - start:.1f} s)", flush=True)
    print(f"RESULT cuda_check_failed={len(FAILED)} (target == 0) {' '.join(FAILED)}")


if __name__ == "__main__":
    main()
