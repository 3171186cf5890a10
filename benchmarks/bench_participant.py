"""A whole participant at the paper's scale, run through the real ``bids_vlm`` command, against
the floor of its arithmetic measured in the same run.

The case (issue 13): an fMRIPrep-style MNI152NLin2009cAsym 2 mm whole brain (nilearn's MNI152
brain mask at 2 mm; ``--voxels N`` keeps its first N voxels), a movie of ``--minutes`` (default
10) in ``--runs`` runs (default 2; one film part per run, as studyforrest's segments) at TR
``--tr`` (default 1 s) with word-level text events (2.5 words a second from a 2,000-word vocabulary), and CLIP ViT-B/32 (``clip-vit-b-32``) with
random weights in a ``--model-dir``: all 61,440 ANs of its 24 layers, default options otherwise.
The data look like real data: the film (H.264, 25 fps, 640 x 360: ``film.py``) shows coloured
fields driven by 8 slow latent signals, a third of the voxels carry the HRF-convolved latents
(random loadings, so many AN x voxel pairs are significant, as with a visually driven cortex), every voxel has AR(1) noise
(phi 0.4) plus six random-walk motion confounds (regressed out by the cleaning).

It prints each stage's wall time (the Nipype nodes' own durations, summed by stage) and the peak
resident memory of bids_vlm and all its worker processes together (sampled every 0.5 s from
/proc; per stage, while its nodes ran), the sizes of the outputs and the work directory, and
the floor: the bare float32 products of the association (N x T times T x V, one per layer) and
of the encoding (X_train' Y_train of each outer fold of each layer), timed here with torch on
the same shapes. Ends with ``RESULT participant_vs_floor=<wall / floor> (target <= 3)``. The
default case takes about 8 minutes of bids_vlm on 2 cores (plus 3 minutes writing the film and
the BOLD); ``--voxels 20000 --minutes 2`` about one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from film import write_film  # noqa: E402

SPACE = "MNI152NLin2009cAsym"
N_LATENT = 8
STAGES = ("timelines", "mask", "clean", "extract", "regressors", "associate", "encode", "enrich",
          "lesion",
          "atoms", "outputs", "report")


def brain_mask(n_voxels: int | None):
    """(nibabel image, n) nilearn's MNI152 2 mm brain mask, cut to its first n_voxels voxels."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=2)
    data = np.asarray(img.dataobj) > 0
    if n_voxels and n_voxels < data.sum():
        flat = data.reshape(-1)
        flat[np.flatnonzero(flat)[n_voxels:]] = False
        data = flat.reshape(data.shape)
    return nib.Nifti1Image(data.astype(np.uint8), img.affine), int(data.sum())


def latents(n: int, rng) -> np.ndarray:
    """(n, N_LATENT) slow signals in [0, 1] (smoothed random walks), one row per second."""
    from scipy.ndimage import gaussian_filter1d

    walk = gaussian_filter1d(rng.standard_normal((n, N_LATENT)), 4.0, axis=0)
    walk -= walk.min(0)
    return walk / np.maximum(walk.max(0), 1e-9)


def write_dataset(root: Path, args, rng) -> int:
    """The BIDS dataset with fMRIPrep-style derivatives; returns the number of voxels."""
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.first_level import spm_hrf

    mask, n_vox = brain_mask(args.voxels)
    seconds = int(round(args.minutes * 60))
    per_run = seconds // args.runs
    n_scans = int(round(per_run / args.tr))
    lat = latents(seconds, rng)
    (root / "stimuli").mkdir(parents=True)
    words = [f"word{i}" for i in range(2000)]
    for name, data in (("dataset_description.json", {"Name": "scale", "BIDSVersion": "1.9.0",
                                                     "DatasetType": "raw"}),
                       ("task-movie_bold.json", {"RepetitionTime": args.tr, "TaskName": "movie"})):
        (root / name).write_text(json.dumps(data))
    deriv = root / "derivatives" / "fmriprep"
    deriv.mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep (simulated)", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    inside = np.asarray(mask.dataobj) > 0
    carriers = rng.random(n_vox) < 1 / 3
    loadings = rng.standard_normal((N_LATENT, n_vox)).astype(np.float32) * carriers
    hrf = spm_hrf(args.tr, oversampling=1)
    for run in range(args.runs):
        t0 = run * per_run
        write_film(root / "stimuli" / f"movie_part{run + 1}.mp4", lat[t0:t0 + per_run], rng)
        times = np.arange(n_scans) * args.tr
        drive = lat[np.minimum((t0 + times).astype(int), seconds - 1)]
        drive = np.stack([np.convolve(d - d.mean(), hrf)[:n_scans] for d in drive.T], 1)
        drive /= drive.std(0) + 1e-9
        bold = np.empty((n_scans, n_vox), np.float32)
        bold[0] = rng.standard_normal(n_vox)
        for t in range(1, n_scans):  # AR(1) 0.4
            bold[t] = 0.4 * bold[t - 1] + np.sqrt(1 - 0.16) * rng.standard_normal(n_vox)
        bold += 0.5 * drive.astype(np.float32) @ loadings
        motion = np.cumsum(rng.normal(0, 0.02, (n_scans, 6)), 0)
        bold += (motion @ rng.normal(0, 0.5, (6, n_vox))).astype(np.float32)
        bold += 100.0
        stem = f"sub-01_task-movie_run-{run + 1}"
        func = root / "sub-01" / "func"
        func.mkdir(parents=True, exist_ok=True)
        vol = np.zeros(inside.shape + (n_scans,), np.float32)
        vol[inside] = bold.T
        img = nib.Nifti1Image(vol, mask.affine)
        img.header.set_zooms((2.0, 2.0, 2.0, args.tr))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, func / f"{stem}_bold.nii.gz")
        dfunc = deriv / "sub-01" / "func"
        dfunc.mkdir(parents=True, exist_ok=True)
        nib.save(img, dfunc / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
        nib.save(mask, dfunc / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
        pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                      "rot_z"]).to_csv(
            dfunc / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False)
        onsets = np.arange(0, per_run, 0.4)
        events = pd.concat([
            pd.DataFrame({"onset": [0.0], "duration": [float(per_run)],
                          "stim_file": [f"movie_part{run + 1}.mp4"], "word": ["n/a"]}),
            pd.DataFrame({"onset": onsets, "duration": 0.4, "stim_file": "n/a",
                          "word": rng.choice(words, len(onsets))})])
        events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False)
    return n_vox


def write_model(model_dir: Path):
    """clip-vit-b-32 with random weights where ``--model-dir`` looks for it."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    folder = model_dir / "clip-vit-b-32"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))


def stage_runs(work: Path) -> dict:
    """{stage: [(start, end) epoch seconds of each of its Nipype nodes]} from their result
    files."""
    from datetime import datetime

    from nipype.utils.filemanip import loadpkl

    out = {}
    for path in work.rglob("result_*.pklz"):
        name = path.parent.name
        stage = next((s for s in STAGES if name.startswith(s) or f"_{s}" in name), "other")
        try:
            runtime = loadpkl(str(path)).runtime
            span = (datetime.fromisoformat(runtime.startTime).timestamp(),
                    datetime.fromisoformat(runtime.endTime).timestamp())
        except Exception:  # a MapNode's parent result, or a node without runtime
            continue
        out.setdefault(stage, []).append(span)
    return out


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (Linux /proc)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


class MemorySampler(threading.Thread):
    """Samples :func:`tree_rss` of a process every ``every`` seconds until stopped."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.samples.append((time.time(), tree_rss(self.pid)))
            self._stop_event.wait(self.every)

    def stop(self):
        self._stop_event.set()
        self.join()

    def peak(self, spans=None) -> int:
        """The largest sample (within any of ``spans`` when given)."""
        return max((rss for t, rss in self.samples
                    if spans is None or any(a <= t <= b for a, b in spans)), default=0)


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def best_of(fn, repeats=3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def floor_seconds(n_vox: int, n_frames: int, runs: int, device: str) -> dict:
    """The bare float32 products of the association and the encoding on these shapes."""
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    chunk = min(n_vox, 50000)  # timed on a slice of the voxels, scaled to all of them
    y = torch.randn(n_frames, chunk, device=dev)
    out = {"association": 0.0, "encoding": 0.0}
    for n_ans, n_layers in ((3072, 12), (2048, 12)):
        x = torch.randn(n_frames, n_ans, device=dev)
        product = best_of(lambda: (x.T @ y, sync()))
        out["association"] += n_layers * product * n_vox / chunk
        train = n_frames - n_frames // runs
        xt, yt = x[:train], y[:train]
        fold = best_of(lambda: (xt.T @ yt, sync()))
        out["encoding"] += n_layers * runs * fold * n_vox / chunk
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, default=0, help="keep the first N mask voxels")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tr", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", type=Path, help="build the case here and keep it")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more bids_vlm options")
    args = parser.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_participant."))
    rng = np.random.default_rng(0)
    try:
        n_vox = write_dataset(base / "bids", args, rng)
        write_model(base / "models")
        n_frames = int(round(args.minutes * 60 / args.tr))
        print(f"case: {n_vox} voxels (MNI152NLin2009cAsym 2 mm), {args.minutes:g} min movie in "
              f"{args.runs} runs ({n_frames} TRs of {args.tr:g} s) with word events, "
              f"clip-vit-b-32 (random weights, 61,440 ANs), device {args.device}", flush=True)
        cmd = [sys.executable, "-m", "bids_vlm", str(base / "bids"), str(base / "out"),
               "participant", "--models", "clip-vit-b-32", "--model-dir", str(base / "models"),
               "--text-column", "word", "--text-window", f"{args.tr:g}",  # the words of each TR
               "--device", args.device, "-w", str(base / "work"), "-q", *args.extra]
        start = time.perf_counter()
        with open(base / "stderr.txt", "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                    env=dict(os.environ, NIPYPE_NO_ET="1"))
            sampler = MemorySampler(proc.pid)
            sampler.start()
            proc.wait()
            sampler.stop()
        wall = time.perf_counter() - start
        peak = sampler.peak() / 2**30
        if proc.returncode:
            print((base / "stderr.txt").read_text()[-4000:], file=sys.stderr)
            print(f"bids_vlm exited {proc.returncode} after {wall:.0f} s (peak {peak:.1f} GB)")
            return proc.returncode
        print("  stage        seconds  peak GB (all processes while its nodes ran)")
        runs = stage_runs(base / "work")
        for stage, spans in sorted(runs.items(), key=lambda s: -sum(b - a for a, b in s[1])):
            print(f"  {stage:<11} {sum(b - a for a, b in spans):8.1f} "
                  f"{sampler.peak(spans) / 2**30:8.2f}")
        floor = floor_seconds(n_vox, n_frames, args.runs, args.device)
        total_floor = sum(floor.values())
        print(f"wall {wall:.1f} s; peak resident memory {peak:.2f} GB (bids_vlm and its workers,"
              f" sampled every 0.5 s); outputs "
              f"{size_of(base / 'out') / 2**20:.0f} MB; work {size_of(base / 'work') / 2**20:.0f}"
              f" MB; floor {total_floor:.1f} s (association products {floor['association']:.1f}"
              f" s, encoding products {floor['encoding']:.1f} s)")
        print(f"RESULT participant_vs_floor={wall / total_floor:.1f} (target <= 3)")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
