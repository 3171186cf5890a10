"""Size of the compact BN store (bids_vlm/stats/bnstore.py) against the entry list it
replaces, and its extrapolation to the paper's scale (issue 13).

BN maps are made like real ones, spatially clustered: on a brain-shaped ellipsoid mask of a
2 mm grid, each AN's map is a random mixture of --latents smooth fields (Gaussian white noise
smoothed to FWHM --fwhm mm, shared by the layer) plus one smooth field of its own; its BNs are
the voxels where |map| passes the threshold that gives it its share of the voxels (drawn from a
Beta distribution with mean --share, a tenth of the ANs with none), BN+ / BN- by the map's
sign; r, z and p are made up from |map| (their size is what matters). Voxels are numbered in
the mask's C order, as ``nilearn.masking.apply_mask`` does.

Reported, per significant entry (E) and per AN (N): the old form (an_index, voxel_index int64,
r, z float32, p float64: 32 bytes an entry, uncompressed in the work file; gzip in the old
_association.h5), the new one (bn_indptr + bn_voxel, shuffle + gzip; top-K r / z / p), the same
BNs at random voxels (no clustering: the worst case), and the time to pack and write a layer.
A second measurement on a grid of --scale-voxels with --scale-sample-ans ANs at --scale-share
gives the bytes per entry at the scale's density and grid; the RESULT lines extrapolate to
--scale-ans x --scale-voxels at --scale-share.

    python benchmarks/bench_bnstore.py            # 4096 ANs x 20000 voxels at 15%, then scale
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from bids_vlm.stats import bnstore


def brain_mask(n_vox: int) -> np.ndarray:
    """A 3-D bool ellipsoid (axes 0.8 : 1 : 0.7, like a brain at 2 mm) of about n_vox voxels."""
    scale = (n_vox / (4 / 3 * np.pi * 0.8 * 0.7)) ** (1 / 3)
    axes = scale * np.array([0.8, 1.0, 0.7])
    shape = tuple(int(np.ceil(2 * a)) + 4 for a in axes)
    grid = np.indices(shape).transpose(1, 2, 3, 0) - (np.array(shape) - 1) / 2
    return ((grid / axes) ** 2).sum(-1) <= 1


def smooth_fields(mask, n: int, fwhm_vox: float, rng) -> np.ndarray:
    """(n, V) float32 smooth Gaussian fields on the mask's voxels, unit variance."""
    out = np.empty((n, int(mask.sum())), np.float32)
    for i in range(n):
        field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), fwhm_vox / 2.3548)
        values = field[mask]
        out[i] = (values - values.mean()) / values.std()
    return out


def bn_entries(n_ans, mask, share, latents, fwhm_vox, seed=0) -> tuple:
    """(an_index, voxel_index, r, z, p) (E,) of clustered BN maps (module docstring)."""
    rng = np.random.default_rng(seed)
    shared = smooth_fields(mask, latents, fwhm_vox, rng)
    own = smooth_fields(mask, min(n_ans, 512), fwhm_vox, rng)
    density = rng.beta(2, 2 * (1 - share) / share, n_ans)
    density[rng.random(n_ans) < 0.1] = 0
    density *= share / density.mean()  # mean share over all ANs
    parts = []
    for lo in range(0, n_ans, 256):
        hi = min(n_ans, lo + 256)
        maps = rng.standard_normal((hi - lo, latents)).astype(np.float32) @ shared
        maps += own[rng.integers(0, len(own), hi - lo)]
        mag = np.abs(maps)
        k = np.clip(np.rint(density[lo:hi] * mag.shape[1]).astype(int), 0, mag.shape[1])
        ordered = -np.sort(-mag, axis=1)
        thr = np.where(k > 0, ordered[np.arange(hi - lo), np.maximum(k - 1, 0)], np.inf)
        an, vox = np.nonzero(mag >= thr[:, None])
        value = maps[an, vox]
        parts.append((an + lo, vox, value))
    an, vox, value = (np.concatenate(x) for x in zip(*parts))
    r = np.tanh(0.05 * value + 0.01 * rng.standard_normal(len(value))).astype(np.float32)
    z = (np.arctanh(r) * np.sqrt(1000) * rng.uniform(0.6, 0.9, len(r))).astype(np.float32)
    p = 2 * ndtr(-np.abs(z.astype(np.float64)))
    return an, vox, r, z, p


def sizes(an, vox, r, z, p, n_ans, keep, folder) -> dict:
    """Bytes of each form of one layer's entries (HDF5 files)."""
    out = {}
    path = folder / "old.h5"
    with h5py.File(path, "w") as h5:  # the old work file: uncompressed
        for name, value in zip(bnstore.ENTRY_FIELDS, (an.astype(np.int64), vox.astype(np.int64),
                                                      r, z, p)):
            h5[name] = value
    out["old_work"] = path.stat().st_size
    with h5py.File(path, "w") as h5:  # the old _association.h5: gzip (write_sparse)
        for name, value in zip(bnstore.ENTRY_FIELDS, (an.astype(np.int64), vox.astype(np.int64),
                                                      r, z, p)):
            h5.create_dataset(name, data=value, compression="gzip")
    out["old_output"] = path.stat().st_size
    start = time.perf_counter()
    packed = bnstore.pack(an, vox, r, z, p, n_ans, keep)
    out["pack_s"] = time.perf_counter() - start
    path = folder / "new.h5"
    start = time.perf_counter()
    with h5py.File(path, "w") as h5:
        bnstore.write_layer(h5.create_group("l"), packed)
    out["write_s"] = time.perf_counter() - start
    with h5py.File(path, "r") as h5:
        stored = {k: h5[f"l/{k}"].id.get_storage_size() for k in h5["l"]}
    out["bns"] = stored["bn_indptr"] + stored["bn_voxel"]
    out["bn_voxel"] = stored["bn_voxel"]
    out["top"] = sum(v for k, v in stored.items() if k.startswith("top_"))
    out["new_file"] = path.stat().st_size
    return out


def measure(n_ans, n_vox, share, opts, label) -> dict:
    mask = brain_mask(n_vox)
    an, vox, r, z, p = bn_entries(n_ans, mask, share, opts.latents, opts.fwhm / 2.0)
    n_vox, n = int(mask.sum()), len(an)
    with tempfile.TemporaryDirectory() as tmp:
        res = sizes(an, vox, r, z, p, n_ans, opts.keep, Path(tmp))
        rng = np.random.default_rng(1)  # the same counts per AN at random voxels
        counts = np.bincount(an, minlength=n_ans)
        rand = np.concatenate([np.sort(rng.choice(n_vox, c, replace=False)) for c in counts])
        res["bns_random"] = sizes(an, rand, r, z, p, n_ans, 0, Path(tmp))["bns"]
    e = max(n, 1)
    print(f"{label}: {n_ans} ANs x {n_vox} voxels, {n} entries ({n / (n_ans * n_vox):.1%})")
    print(f"  old: {res['old_work'] / e:.2f} B/entry uncompressed (work file), "
          f"{res['old_output'] / e:.2f} gzip (old _association.h5)")
    print(f"  new BNs: {res['bns'] / e:.3f} B/entry (bn_voxel {res['bn_voxel'] / e:.3f}); "
          f"random voxels {res['bns_random'] / e:.3f}; top-{opts.keep} r/z/p "
          f"{res['top'] / n_ans:.0f} B/AN; file {res['new_file'] / 2**20:.1f} MiB vs "
          f"{res['old_work'] / 2**20:.1f} MiB; pack {res['pack_s']:.2f} s, write "
          f"{res['write_s']:.2f} s")
    return dict(res, n=n, n_ans=n_ans)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ans", type=int, default=4096)
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--share", type=float, default=0.15)
    parser.add_argument("--keep", type=int, default=100)
    parser.add_argument("--latents", type=int, default=16)
    parser.add_argument("--fwhm", type=float, default=8.0, help="mm (2 mm voxels)")
    parser.add_argument("--scale-ans", type=int, default=61440)
    parser.add_argument("--scale-voxels", type=int, default=235375)
    parser.add_argument("--scale-share", type=float, default=0.05)
    parser.add_argument("--scale-sample-ans", type=int, default=512)
    opts = parser.parse_args()
    measure(opts.ans, opts.voxels, opts.share, opts, "dense case")
    big = measure(opts.scale_sample_ans, opts.scale_voxels, opts.scale_share, opts,
                  "scale grid and density")
    e_scale = opts.scale_share * opts.scale_ans * opts.scale_voxels
    per_entry = big["bns"] / big["n"]
    new = per_entry * e_scale + big["top"] / big["n_ans"] * opts.scale_ans
    old = 32 * e_scale
    print(f"RESULT scale_entries={e_scale / 1e6:.0f}M")
    print(f"RESULT bns_bytes_per_entry={per_entry:.3f} (random voxels "
          f"{big['bns_random'] / big['n']:.3f})")
    print(f"RESULT old_work_file_GB={old / 1e9:.1f} old_output_GB="
          f"{big['old_output'] / big['n'] * e_scale / 1e9:.1f}")
    print(f"RESULT new_file_GB={new / 1e9:.2f} (BNs {per_entry * e_scale / 1e9:.2f}, top-"
          f"{opts.keep} {big['top'] / big['n_ans'] * opts.scale_ans / 1e9:.2f}); ratio "
          f"{old / new:.0f}x")


if __name__ == "__main__":
    main()
