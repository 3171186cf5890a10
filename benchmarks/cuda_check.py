"""CUDA paths vs CPU: AN extraction (tiny-clip) and the streamed association.

Run on a machine with a GPU: ``python benchmarks/cuda_check.py``. Prints the largest CPU/CUDA
differences and the association's speed relative to a bare float32 matrix product of the same
shapes on the same device, then one RESULT line (CPU and CUDA must agree).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bids_vlm.config import ModelConfig
from bids_vlm.encoding import associate, normalize_columns
from bids_vlm.models import extract, load_model

TEXTS = ["a photo of a face", "a photo of a house", "a cat on a chair", "scissors"]


def extraction_diff():
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = f"/tmp/cuda_check_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    model = load_model("tiny-clip", ModelConfig())
    items = {"image": paths, "text": TEXTS}
    cpu = extract(model, items, ModelConfig(device="cpu"), progress=False)
    gpu = extract(model, items, ModelConfig(device="cuda"), progress=False)
    return max(float(np.abs(cpu[k] - gpu[k]).max()) for k in cpu)


def association_check(n_frames, n_an, n_vox, block):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n_frames, n_an)).astype(np.float32)
    y = rng.standard_normal((n_frames, n_vox)).astype(np.float32)
    y[:, :500] += 0.3 * x[:, [0]]
    cpu = associate(x, y, block_size=block, device="cpu")
    torch.cuda.synchronize()
    start = time.perf_counter()
    gpu = associate(x, y, block_size=block, device="cuda")
    torch.cuda.synchronize()
    t_assoc = time.perf_counter() - start
    xn = normalize_columns(x).cuda()
    yn = normalize_columns(y).cuda()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(0, n_an, block):
        (xn[:, s:s + block].T @ yn).abs_().max()
    torch.cuda.synchronize()
    t_mm = time.perf_counter() - start
    same = (np.array_equal(cpu.n_pos, gpu.n_pos) and np.array_equal(cpu.bn_count, gpu.bn_count)
            and np.abs(cpu.best_r - gpu.best_r).max() < 1e-4)
    mismatched = int(np.sum(cpu.n_pos != gpu.n_pos) + np.sum(cpu.n_neg != gpu.n_neg))
    return same, mismatched, t_assoc, t_mm


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--ans", type=int, default=3072)
    parser.add_argument("--voxels", type=int, default=50000)
    parser.add_argument("--block", type=int, default=512)
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    diff = extraction_diff()
    print(f"extraction tiny-clip: max |CPU - CUDA| = {diff:.2e}")
    same, mism, t_assoc, t_mm = association_check(opts.frames, opts.ans, opts.voxels, opts.block)
    print(f"association {opts.ans} ANs x {opts.voxels} voxels x {opts.frames} frames: CUDA "
          f"{t_assoc:.2f} s, bare matmul {t_mm:.2f} s, CPU==CUDA summaries: {same} "
          f"({mism} AN counts differ)")
    print(f"RESULT cuda_association_vs_matmul={t_mm / t_assoc:.3f} (target >= 0.0, info)")
    print(f"RESULT cuda_cpu_agree={int(same and diff < 1e-3)} (target == 1)")


def ridge_check():
    """himalaya's torch_cuda backend gives the CPU's held-out scores."""
    from bids_vlm.encoding.ridge import encode_layer

    rng = np.random.default_rng(2)
    x = rng.standard_normal((600, 500))
    y = x[:, :20] @ rng.standard_normal((20, 2000)) / 5 + rng.standard_normal((600, 2000))
    runs = [150] * 4
    cpu = encode_layer(x, y, runs, backend="numpy")
    start = time.perf_counter()
    gpu = encode_layer(x, y, runs, backend="torch_cuda")
    return float(np.abs(cpu.r - gpu.r).max()), time.perf_counter() - start


if __name__ == "__main__":
    main()
    diff, seconds = ridge_check()
    print(f"ridge (500 features, 2000 voxels, 4 runs): max |r CPU - r CUDA| = {diff:.2e}, "
          f"CUDA {seconds:.1f} s")
    print(f"RESULT cuda_ridge_agree={int(diff < 1e-3)} (target == 1)")
