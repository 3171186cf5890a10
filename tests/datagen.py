"""Generated BIDS datasets for the tests (no downloads), in the spirit of nilearn's data_gen.

:func:`make_planted_dataset` writes a BIDS dataset with fMRIPrep-style derivatives whose BOLD
carries the regressors of known tiny-clip ANs in known voxels, plus white noise elsewhere.
The regressors are computed with bids_vlm's own timeline, model and regressor functions (those
are tested against nilearn and a hook-free forward pass in their own test modules).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

CAPTIONS = ["a red car on a road", "a dog running in a park", "two people talking",
            "a bowl of fruit", "a city at night", "a cat sleeping on a sofa",
            "waves on a beach", "a man playing guitar", "snow on a mountain",
            "a child with a kite", "a plate of pasta", "a train at a station"]
SPACE = "MNI152NLin2009cAsym"
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


@dataclass
class Plant:
    """Signal of AN ``stream/layer/unit`` added with weight ``beta`` to voxels ``voxels``
    (indices in the order of the in-mask voxels)."""

    stream: str
    layer: int
    unit: int
    voxels: list
    beta: float
    model: str = "tiny-clip"

    @property
    def an_id(self):
        return f"{self.model}/{self.stream}/{self.layer:02d}/{self.unit}"


DEFAULT_PLANTS = (Plant("image", 2, 7, list(range(0, 12)), 0.6),
                  Plant("text", 1, 3, list(range(12, 24)), -0.6))


@dataclass
class PlantedDataset:
    root: Path
    subjects: list
    plants: tuple
    n_voxels: int
    noise_voxels: list = field(default_factory=list)


def make_images(stim_dir, n=20, size=48, seed=0) -> list[str]:
    """``n`` distinct random images (coloured blobs on gradients) as PNG files."""
    rng = np.random.default_rng(seed)
    stim_dir = Path(stim_dir)
    stim_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    names = []
    for i in range(n):
        base = rng.uniform(0, 255, 3)[None, None, :] * (0.5 + 0.5 * (xx if i % 2 else yy))[..., None]
        cy, cx, rad = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.1, 0.3)]
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2)[..., None] * rng.uniform(0, 255, 3)
        img = np.clip(base + blob + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        name = f"img{i:02d}.png"
        Image.fromarray(img).save(stim_dir / name)
        names.append(name)
    return names


def make_events(rng, images, n_events, spacing) -> pd.DataFrame:
    return pd.DataFrame({"onset": np.arange(n_events) * spacing, "duration": spacing,
                         "trial_type": "view",
                         "stim_file": rng.choice(images, n_events),
                         "caption": rng.choice(CAPTIONS, n_events)})


def _write_json(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1))


def planted_signal(root, events_by_run, n_scans, tr, plants, seed=0, unique=True):
    """{run index: (n_scans, n_plants) z-scored regressors of the planted ANs}: with
    ``unique`` (default) each AN's own part, its regressor residualised on the stream's
    stimulus presence and its layer's top principal components (what ``--bn-definition
    unique``, the default, tests); else the whole regressor."""
    from bids_vlm.config import ModelConfig, StimulusConfig
    from bids_vlm.models import extract, load_model
    from bids_vlm.design.regressors import (
        convolution_matrix,
        frame_times,
        make_regressors,
        sample_activations,
        zscore,
    )
    from bids_vlm.stats.unique import N_PCS, nuisance_basis, residualise
    from bids_vlm.inputs.stimuli import build_timeline, sample_items, unique_items

    tls = [build_timeline(ev, n_scans * tr, StimulusConfig(), Path(root) / "stimuli")
           for ev in events_by_run]
    acts, index = {}, {}
    for model in sorted({p.model for p in plants}):
        streams = sorted({p.stream for p in plants if p.model == model})
        items = {s: unique_items(tls, s) for s in streams}
        found = extract(load_model(model, ModelConfig(seed=seed)), items, ModelConfig(seed=seed),
                        progress=False)
        acts.update({f"{model}/{k}": v for k, v in found.items()})
        index.update({(model, s): {k: i for i, k in enumerate(v)} for s, v in items.items()})
    matrices = [convolution_matrix(tl.times, tl.dt, frame_times(n_scans, tr)) for tl in tls]
    cols = []
    for p in plants:  # (runs x n_scans, units) regressors of the plant's whole layer
        table = acts[f"{p.model}/{p.stream}/{p.layer:02d}"]
        layer = np.concatenate([make_regressors(m, sample_activations(
            sample_items(tl, p.stream), table, index[(p.model, p.stream)]))
            for m, tl in zip(matrices, tls)])
        planted = layer[:, p.unit]
        if unique:  # the AN's own part, as --bn-definition unique defines its BNs
            presence = np.concatenate([make_regressors(m, np.array(
                [[x is not None] for x in sample_items(tl, p.stream)], float))
                for m, tl in zip(matrices, tls)])
            basis = nuisance_basis(layer, presence, N_PCS)
            planted = residualise(layer[:, [p.unit]], basis)[:, 0]
        cols.append(planted)
    both = np.column_stack(cols)
    return [zscore(both[r * n_scans:(r + 1) * n_scans]) for r in range(len(tls))]


def make_planted_dataset(root, n_subjects=2, n_runs=2, n_scans=100, tr=2.0, shape=(6, 6, 6),
                         plants=DEFAULT_PLANTS, noise=1.0, seed=0, baseline=None,
                         with_derivatives=True, affine=AFFINE, repeated=False,
                         same_events=False, unique=True, grayordinates=None,
                         legacy_sidecar=False) -> PlantedDataset:
    """BIDS dataset + fMRIPrep-like derivatives with planted AN signal (see module doc).

    baseline: (n_voxels,) mean intensity per voxel (default 100 everywhere); repeated: every
    run of a subject shows the same stimulus sequence (fresh noise in each); same_events:
    every subject sees the first subject's runs (e.g. the same movie; fresh noise in each);
    unique: plant each AN's own part (default), else its whole regressor
    (:func:`planted_signal`). grayordinates: CIFTI brain models; the derivatives are then
    ``*_space-fsLR_den-91k_bold.dtseries.nii`` on them (the plants' voxels are their rows; the
    raw BOLD a small volume of as many frames), with fMRIPrep <= 20.x's
    ``*_bold.dtseries.json`` sidecar when ``legacy_sidecar``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = make_images(root / "stimuli", seed=seed)
    _write_json(root / "dataset_description.json",
                {"Name": "planted", "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    _write_json(root / "task-view_bold.json", {"RepetitionTime": tr, "TaskName": "view"})
    fmriprep = root / "derivatives" / "fmriprep"
    if with_derivatives:
        _write_json(fmriprep / "dataset_description.json",
                    {"Name": "fMRIPrep (simulated)", "BIDSVersion": "1.9.0",
                     "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]})
    n_vox = int(np.prod(shape)) if grayordinates is None else len(grayordinates)
    subjects = [f"{i + 1:02d}" for i in range(n_subjects)]
    shared = None
    for sub in subjects:
        if shared is None:
            events = [make_events(rng, images, int(n_scans * tr / 2), 2.0) for _ in range(n_runs)]
            if repeated:
                events = [events[0]] * n_runs
            signal = planted_signal(root, events, n_scans, tr, plants, unique=unique)
            shared = (events, signal) if same_events else None
        else:
            events, signal = shared
        for run, (ev, sig) in enumerate(zip(events, signal), start=1):
            base = 100.0 if baseline is None else np.asarray(baseline, float)[None, :]
            data = base + noise * rng.standard_normal((n_scans, n_vox))
            for j, plant in enumerate(plants):
                data[:, plant.voxels] += plant.beta * sig[:, [j]]
            if grayordinates is not None:
                _write_cifti_run(root, fmriprep, sub, run, ev, data, grayordinates, rng, tr,
                                 legacy_sidecar)
                continue
            _write_run(root, fmriprep if with_derivatives else None, sub, run, ev, data, shape,
                       rng, affine, tr)
    planted = sorted({v for p in plants for v in p.voxels})
    return PlantedDataset(root, subjects, tuple(plants), n_vox,
                          [v for v in range(n_vox) if v not in planted])


def _write_cifti_run(root, fmriprep, sub, run, events, data, bm, rng, tr, legacy):
    """A raw run (a 2 x 2 x 2 volume of as many frames) and its fMRIPrep CIFTI time series."""
    from nibabel.cifti2 import cifti2_axes as axes

    _write_run(root, None, sub, run, events, rng.standard_normal((len(data), 8)) + 100,
               (2, 2, 2), rng, AFFINE, tr)
    stem = f"sub-{sub}_task-view_run-{run}"
    dfunc = fmriprep / f"sub-{sub}" / "func"
    dfunc.mkdir(parents=True, exist_ok=True)
    img = nib.Cifti2Image(data.astype(np.float32), header=(axes.SeriesAxis(
        start=0.0, step=tr, size=len(data), unit="SECOND"), bm))
    img.nifti_header.set_intent("ConnDenseSeries")
    name = dfunc / f"{stem}_space-fsLR_den-91k_bold"
    nib.save(img, f"{name}.dtseries.nii")
    side = ({"grayordinates": "91k", "space": "HCP grayordinates",
             "surface": "fsLR", "surface_density": "32k", "volume": "MNI152NLin6Asym"}
            if legacy else {"RepetitionTime": tr, "TaskName": "view"})
    _write_json(Path(f"{name}.dtseries.json" if legacy else f"{name}.json"), side)
    conf = pd.DataFrame(rng.normal(0, 0.1, (data.shape[0], 6)),
                        columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    conf.to_csv(dfunc / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False)


def _write_run(root, fmriprep, sub, run, events, data, shape, rng, affine=AFFINE, tr=2.0):
    stem = f"sub-{sub}_task-view_run-{run}"
    func = root / f"sub-{sub}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False)
    img = nib.Nifti1Image(data.T.reshape(*shape, -1).astype(np.float32), affine)
    img.header.set_zooms(img.header.get_zooms()[:3] + (tr,))  # the TR, as scanners write it
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, func / f"{stem}_bold.nii.gz")
    if fmriprep is None:
        return
    dfunc = fmriprep / f"sub-{sub}" / "func"
    dfunc.mkdir(parents=True, exist_ok=True)
    nib.save(img, dfunc / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), affine),
             dfunc / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
    conf = pd.DataFrame(rng.normal(0, 0.1, (data.shape[0], 6)),
                        columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    conf.to_csv(dfunc / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False)


# ------------------------------------------------------------------ layouts of real datasets

def write_nifti(path, data, dtype=np.float32, affine=np.diag([3.0, 3.0, 3.0, 1.0])):
    """Save ``data`` as a NIfTI of ``dtype`` at ``path`` (a BOLD run, or a mask with uint8);
    returns the path."""
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), affine), path)
    return path


def write_colour_video(path, colours, fps=25, seconds_per_colour=1.0, size=(32, 24)):
    """A video (MPEG-4) showing each RGB colour of ``colours`` for ``seconds_per_colour``
    seconds in turn; returns its path."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for colour in colours:
            frame = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
            for _ in range(int(round(fps * seconds_per_colour))):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path, seed, size=32):
    """A random RGB image (a coloured gradient with noise) at ``path`` (any PIL format by its
    extension; ``.JPEG`` too)."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    yy = np.mgrid[0:size, 0:size][0][..., None] / size
    img = rng.uniform(0, 255, 3) * (0.3 + 0.7 * yy) + rng.normal(0, 20, (size, size, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
        path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None)
    return path


def write_layout_dataset(root, runs, tr, n_scans, shape=(8, 8, 8), seed=0, name="layout"):
    """A raw BIDS dataset (no derivatives) with the given events: runs is {BIDS stem, e.g.
    ``sub-01/ses-1/func/sub-01_ses-1_task-x_run-01``: events.tsv path or DataFrame}; each run
    gets white-noise BOLD of ``n_scans`` volumes on a ``shape`` grid with TR ``tr`` (also in a
    top-level ``task-<task>_bold.json``): a bright ball in a dark field, so that nilearn's EPI
    mask finds a brain. Returns the root."""
    import shutil

    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_json(root / "dataset_description.json",
                {"Name": name, "BIDSVersion": "1.8.0", "DatasetType": "raw"})
    for stem, events in runs.items():
        out = root / f"{stem}_events.tsv"
        out.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(events, pd.DataFrame):
            events.to_csv(out, sep="\t", index=False, na_rep="n/a")
        else:
            shutil.copy(events, out)
        task = next(p for p in Path(stem).name.split("_") if p.startswith("task-"))
        _write_json(root / f"{task}_bold.json", {"RepetitionTime": tr, "TaskName": task[5:]})
        ijk = np.indices(shape).transpose(1, 2, 3, 0)
        head = np.linalg.norm(ijk - (np.array(shape) - 1) / 2, axis=-1) < min(shape) * 0.4
        data = (np.where(head, 1000.0, 5.0)[..., None]
                + rng.standard_normal((*shape, n_scans))).astype(np.float32)
        img = nib.Nifti1Image(data, AFFINE)
        img.header.set_zooms(img.header.get_zooms()[:3] + (tr,))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, root / f"{stem}_bold.nii.gz")
    return root
