"""The bad-input catalogue: every broken input gives its documented exit code and a message
naming the file and the problem, the input is never written, and no half-written output stays.

Each case copies the planted dataset (tests/datagen.py), breaks one thing and runs the CLI
in-process (``bids_vlm.cli.run.main``). The README's "Bad inputs" table is made from ``CASES``
(:func:`readme_rows`), and a test checks that they agree.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SHARED

from bids_vlm.cli.run import main

EXAMPLES = SHARED / "data" / "bids-examples"
SPACE = "space-MNI152NLin2009cAsym"
RUN1 = "sub-01_task-view_run-1"
RUN2 = "sub-01_task-view_run-2"
ARGS = ["--participant-label", "01", "--layers", "2", "--streams", "image", "--no-encoding"]


@dataclass
class Ctx:
    """What a breaker may change: the dataset, the output folder, extra CLI arguments."""

    bids: Path
    tmp: Path
    out: Path
    args: list = field(default_factory=list)
    finalizers: list = field(default_factory=list)

    def func(self, name, run=RUN1):
        return self.bids / "sub-01" / "func" / f"{run}_{name}"

    def deriv(self, name, run=RUN1):
        return self.bids / "derivatives" / "fmriprep" / "sub-01" / "func" / f"{run}_{name}"

    @property
    def preproc(self):
        return self.deriv(f"{SPACE}_desc-preproc_bold.nii.gz")

    @property
    def mask(self):
        return self.deriv(f"{SPACE}_desc-brain_mask.nii.gz")

    def edit_events(self, edit, run=RUN1):
        path = self.func("events.tsv", run)
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        edit(table)
        table.to_csv(path, sep="\t", index=False)

    def edit_bold(self, edit, path=None):
        """edit(data (x, y, z, t) float32) -> new data, saved with the same affine."""
        path = path or self.preproc
        img = nib.load(path)
        nib.save(nib.Nifti1Image(edit(img.get_fdata(dtype=np.float32)), img.affine), path)


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, for the README
    breaks: Callable  # breaks(ctx): change ctx.bids / ctx.out / ctx.args
    code: int
    message: str  # in stderr or the log; {bids} is the dataset's path
    check: Callable | None = None  # check(ctx) after a successful run
    needs: str = ""  # "shared": ../shared/data/bids-examples; "mount": tmpfs (root)


# ------------------------------------------------------------------------------ breakers

def _no_description(ctx):
    (ctx.bids / "dataset_description.json").unlink()


def _no_tr(ctx):
    (ctx.bids / "task-view_bold.json").write_text(json.dumps({"TaskName": "view"}))


def _empty_nifti(ctx):
    ctx.preproc.write_bytes(b"")


def _header_only_nifti(ctx):
    import gzip

    header = gzip.open(ctx.preproc).read()[:352]
    with gzip.open(ctx.preproc, "wb") as handle:  # a valid gzip of the 352-byte header only
        handle.write(header)


def _truncated_gzip(ctx):
    ctx.preproc.write_bytes(ctx.preproc.read_bytes()[:3000])


def _bold_3d(ctx):
    ctx.edit_bold(lambda d: d[..., 0])


NAN_VOXELS = [100, 101, 102]  # noise voxels (the planted ones are 0-23)
CONSTANT_VOXELS = [110, 111]


def _nan_voxels(ctx):
    def edit(data):
        flat = data.reshape(-1, data.shape[-1])
        flat[NAN_VOXELS[:2], 5:9] = np.nan
        flat[NAN_VOXELS[2], :] = np.inf
        return flat.reshape(data.shape)
    ctx.edit_bold(edit)
    ctx.edit_bold(edit, ctx.deriv(f"{SPACE}_desc-preproc_bold.nii.gz", RUN2))


def _constant_voxels(ctx):
    def edit(data):
        flat = data.reshape(-1, data.shape[-1])
        flat[CONSTANT_VOXELS] = 500.0
        return flat.reshape(data.shape)
    ctx.edit_bold(edit)
    ctx.edit_bold(edit, ctx.deriv(f"{SPACE}_desc-preproc_bold.nii.gz", RUN2))


def _excluded_voxels_check(voxels):
    def check(ctx):
        func = ctx.out / "sub-01" / "func"
        r = nib.load(next(func.glob("*Image02_stat-r_statmap.nii.gz"))).get_fdata().reshape(-1)
        assert np.isfinite(r).all()
        assert (r[voxels] == 0).all()  # excluded from every run: no statistic
        assert (np.abs(r[:12]) > 0.3).all()  # the planted image voxels are still found
    return check


def _events_after_end(ctx):
    ctx.edit_events(lambda t: t.__setitem__("onset", ((t.onset.astype(float) + 10) * 1000)
                                            .map(str)))  # in ms


def _some_events_after_end(ctx):
    def edit(t):
        t.loc[len(t) - 2:, "onset"] = ["250", "260"]  # the run is 200 s long
    ctx.edit_events(edit)


def _negative_onset(ctx):
    ctx.edit_events(lambda t: t.loc.__setitem__((0, "onset"), "-1.5"))


def _missing_onset(ctx):
    ctx.edit_events(lambda t: t.loc.__setitem__((1, "onset"), "n/a"))


def _no_onset_column(ctx):
    ctx.edit_events(lambda t: t.drop(columns="onset", inplace=True))


def _non_numeric_duration(ctx):
    ctx.edit_events(lambda t: t.loc.__setitem__((2, "duration"), "2s"))


def _missing_stim_file(ctx):
    (ctx.bids / "stimuli" / "img03.png").unlink()


def _bad_stim_extension(ctx):
    ctx.edit_events(lambda t: t.loc.__setitem__((0, "stim_file"), "img03.psd"))


def _unreadable_image(ctx):
    (ctx.bids / "stimuli" / "img03.png").write_bytes(b"not a png")


def _unreadable_video(ctx):
    (ctx.bids / "stimuli" / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"garbage" * 50)
    ctx.edit_events(lambda t: t.loc.__setitem__((0, "stim_file"), "clip.mp4"))


def _non_utf8_events(ctx):
    path = ctx.func("events.tsv")
    path.write_bytes(path.read_bytes().replace(b"a red car", b"a r\xe9d car"))


def _malformed_tsv(ctx):
    path = ctx.func("events.tsv")
    lines = path.read_text().splitlines()
    lines[3] += "\textra\tfields"
    path.write_text("\n".join(lines) + "\n")


def _empty_events(ctx):
    ctx.func("events.tsv").write_bytes(b"")


def _no_events(ctx):
    for path in ctx.bids.rglob("*_events.tsv"):
        path.unlink()


def _header_only_events(ctx):
    for run in (RUN1, RUN2):
        path = ctx.func("events.tsv", run)
        path.write_text(path.read_text().splitlines()[0] + "\n")


def _unknown_text_column(ctx):
    ctx.args += ["--text-column", "subtitle"]


def _mask_elsewhere(ctx):
    img = nib.load(ctx.mask)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj),
                             img.affine @ np.array([[1, 0, 0, 100], [0, 1, 0, 0], [0, 0, 1, 0],
                                                    [0, 0, 0, 1.0]])), ctx.mask)


def _mask_other_grid(ctx):
    for run in (RUN1, RUN2):  # a 6 mm mask of the same field of view
        nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.diag([6.0, 6, 6, 1])
                                 @ np.array([[1, 0, 0, 0.25], [0, 1, 0, 0.25], [0, 0, 1, 0.25],
                                             [0, 0, 0, 1]])),
                 ctx.deriv(f"{SPACE}_desc-brain_mask.nii.gz", run))


def _empty_mask(ctx):
    img = nib.load(ctx.mask)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), ctx.mask)


def _runs_on_two_grids(ctx):
    for name in (f"{SPACE}_desc-preproc_bold.nii.gz", f"{SPACE}_desc-brain_mask.nii.gz"):
        path = ctx.deriv(name, RUN2)
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:5], img.affine), path)


def _confound_rows(ctx):
    path = ctx.deriv("desc-confounds_timeseries.tsv")
    pd.read_csv(path, sep="\t").iloc[:-1].to_csv(path, sep="\t", index=False)


def _confound_text(ctx):
    path = ctx.deriv("desc-confounds_timeseries.tsv")
    table = pd.read_csv(path, sep="\t").astype(object)
    table.loc[4, "rot_x"] = "NaN?"
    table.to_csv(path, sep="\t", index=False)


def _unknown_task(ctx):
    ctx.args += ["--task", "rest"]


def _unknown_participant(ctx):
    ctx.args[ctx.args.index("01")] = "sub-99"


def _conflicting_filters(ctx):
    path = ctx.tmp / "filters.json"
    path.write_text(json.dumps({"bold": {"subject": "02"}}))
    ctx.args += ["--bids-filter-file", str(path)]


def _filters_select_nothing(ctx):
    ctx.args += ["--run", "3"]


def _invalid_filter_file(ctx):
    path = ctx.tmp / "filters.json"
    path.write_text("{'bold': ")
    ctx.args += ["--bids-filter-file", str(path)]


def _output_inside_input(ctx):
    ctx.out = ctx.bids / "sub-01" / "bids_vlm"


def _output_is_input(ctx):
    ctx.out = ctx.bids


def _output_not_writable(ctx):
    ctx.out = Path("/proc/bids_vlm_out")


def _disk_full(ctx):
    ctx.out.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(ctx.out)],
                           capture_output=True, text=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    ctx.finalizers.append(lambda: subprocess.run(["umount", str(ctx.out)]))


def _disk_full_work_dir(ctx):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    ctx.monkeypatch.setattr(np, "save", no_space)


def _corrupted_cache(ctx):
    """A first run fills the activation cache; its files are then garbled and the extraction
    node's own cache removed, so that the second run reads the activation cache."""
    assert main([str(ctx.bids), str(ctx.tmp / "first"), "participant", *ARGS,
                 "-w", str(ctx.tmp / "work")]) == 0
    files = sorted((ctx.tmp / "work").rglob("activation_cache/*/*.npz"))
    ctx.n_cached = len(files)
    assert len(files) > 3
    for path in files[:3]:
        path.write_bytes(path.read_bytes()[:100])
    for node in (ctx.tmp / "work").rglob("extract_*"):
        shutil.rmtree(node)


def _cache_check(ctx):
    name = f"sub-01/func/sub-01_task-view_{SPACE}_desc-tinyclip_neurons.tsv"
    assert (ctx.out / name).read_bytes() == (ctx.tmp / "first" / name).read_bytes()
    assert len(list((ctx.tmp / "work").rglob("activation_cache/*/*.npz"))) == ctx.n_cached


def _truncated_checkpoint(ctx):
    from safetensors.torch import save_file
    import torch

    folder = ctx.tmp / "models" / "clip-vit-b-32"
    folder.mkdir(parents=True)
    path = folder / "open_clip_model.safetensors"
    save_file({"logit_scale": torch.ones(()), "positional_embedding": torch.zeros(50, 768)},
              path)
    path.write_bytes(path.read_bytes()[:-4000])  # an interrupted download
    ctx.args += ["--models", "clip-vit-b-32", "--model-dir", str(ctx.tmp / "models")]


def _missing_weights(ctx):
    import huggingface_hub.constants

    ctx.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(ctx.tmp / "hf"))
    ctx.monkeypatch.delenv("BIDS_VLM_MODEL_DIR", raising=False)
    ctx.args += ["--models", "clip-vit-b-32", "--model-dir", str(ctx.tmp / "models")]


def _too_little_memory(ctx):
    ctx.args += ["--mem", "0.00001GB"]


def _write_atlas(ctx, name, labels=True):
    """A label image on the planted grid (value 1 in the first 12 voxels), optionally with its
    labels TSV, in the temporary folder (not the dataset)."""
    import nibabel as nib
    import numpy as np

    ref = nib.load(ctx.func("bold.nii.gz"))  # the derivatives share its grid
    data = np.zeros(ref.shape[:3], np.int16)
    data.reshape(-1)[:12] = 1
    path = ctx.tmp / name
    nib.save(nib.Nifti1Image(data, ref.affine), path)
    if labels:
        (ctx.tmp / name.replace(".nii.gz", ".tsv")).write_text("index\tname\n1\tVisual\n")
    ctx.args += ["--atlas", str(path)]


def _atlas_without_labels(ctx):
    _write_atlas(ctx, "atlas-mine_dseg.nii.gz", labels=False)


def _atlas_other_space(ctx):
    _write_atlas(ctx, "atlas-mine_space-T1w_dseg.nii.gz")


def _tr(value):
    """The sidecar's RepetitionTime set to ``value`` (raw JSON text, e.g. NaN)."""
    def breaks(ctx):
        (ctx.bids / "task-view_bold.json").write_text(
            '{"TaskName": "view", "RepetitionTime": %s}' % value)
    return breaks


def _header_tr(ctx):
    """The NIfTI header's pixdim[4] says 2.5 s, the sidecar 2 s."""
    for path in (ctx.preproc, ctx.func("bold.nii.gz")):
        img = nib.load(path)
        img.header.set_zooms(img.header.get_zooms()[:3] + (2.5,))
        nib.save(img, path)


def _event_cell(column, line, value):
    """Events line ``line`` (1 is the header) of run 1 gets ``value`` in ``column``."""
    def breaks(ctx):
        def edit(table):
            table.loc[line - 2, column] = value
        ctx.edit_events(edit)
    return breaks


def _filter_file(data):
    def breaks(ctx):
        path = ctx.tmp / "filters.json"
        path.write_text(json.dumps(data))
        ctx.args += ["--bids-filter-file", str(path)]
    return breaks


def _confound_inf(ctx):
    path = ctx.deriv("desc-confounds_timeseries.tsv")
    table = pd.read_csv(path, sep="\t")
    table.loc[7, "rot_y"] = np.inf
    table.to_csv(path, sep="\t", index=False)


def _empty_confounds(ctx):
    ctx.deriv("desc-confounds_timeseries.tsv").write_bytes(b"")


def _raw_two_volumes(ctx):
    shutil.rmtree(ctx.bids / "derivatives")
    for run in (RUN1, RUN2):
        ctx.edit_bold(lambda d: d[..., :2], ctx.func("bold.nii.gz", run))


def _space_not_found(ctx):
    ctx.args += ["--space", "fsLR"]


def _write_dtseries(ctx, run, density="91k"):
    """A CIFTI time series (60 of the 91k grayordinates) for ``run``, as fMRIPrep names it."""
    from nibabel.cifti2 import cifti2_axes as axes

    from bids_vlm import cifti

    n_scans = nib.load(ctx.preproc).shape[3]
    bm = cifti.standard_91k()[np.r_[0:40, 91262:91282]]
    img = nib.Cifti2Image(np.random.default_rng(0).standard_normal((n_scans, len(bm)))
                          .astype(np.float32),
                          header=(axes.SeriesAxis(0.0, 2.0, n_scans, "SECOND"), bm))
    path = ctx.deriv(f"space-fsLR_den-{density}_bold.dtseries.nii", run)
    nib.save(img, path)
    return path


def _cifti_170k(ctx):
    for run in (RUN1, RUN2):
        _write_dtseries(ctx, run, "170k")
    ctx.args += ["--space", "fsLR"]


def _cifti_smoothing(ctx):
    for run in (RUN1, RUN2):
        _write_dtseries(ctx, run)
    ctx.args += ["--space", "fsLR", "--smoothing-fwhm", "4"]


def _cifti_truncated(ctx):
    path = _write_dtseries(ctx, RUN1)
    _write_dtseries(ctx, RUN2)
    path.write_bytes(path.read_bytes()[:-300])
    ctx.args += ["--space", "fsLR"]


def _singular_affine(ctx):
    img = nib.load(ctx.preproc)
    affine = img.affine.copy()
    affine[2, :3] = affine[0, :3]  # the z axis folded onto x: no voxel has a place
    img.set_sform(affine, code=1)
    img.set_qform(None, code=0)
    nib.save(img, ctx.preproc)


def _stimulus_directory(ctx):
    (ctx.bids / "stimuli" / "img03.png").unlink()
    (ctx.bids / "stimuli" / "img03.png").mkdir()


def _stimulus_fifo(ctx):
    (ctx.bids / "stimuli" / "img03.png").unlink()
    os.mkfifo(ctx.bids / "stimuli" / "img03.png")


def _stimulus_symlink_out(ctx):
    secret = ctx.tmp / "secret.png"
    shutil.copy(ctx.bids / "stimuli" / "img03.png", secret)
    (ctx.bids / "stimuli" / "img03.png").unlink()
    (ctx.bids / "stimuli" / "img03.png").symlink_to(secret)


def _bids_dir_is_file(ctx):
    ctx.bids = ctx.tmp / "dataset.tar"
    ctx.bids.write_bytes(b"not a folder")


def _work_dir_full(ctx):
    work = ctx.tmp / "work"
    work.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(work)],
                           capture_output=True, text=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    ctx.finalizers.append(lambda: subprocess.run(["umount", str(work)]))


def _meter_payload(kind):
    """A malicious METER checkpoint in --model-dir (with a tokenizer folder, so that only the
    checkpoint can stop the run): a TorchScript archive, or a pickle calling os.system; either
    would create ``ctx.tmp / "marker"`` if it ran (tests/models/test_checkpoint.py proves they do)."""
    def breaks(ctx):
        from weights import pickle_payloads, save_torchscript_payload, \
            write_pickle_payload

        folder = ctx.tmp / "models" / "meter-clip16-roberta"
        (folder / "roberta-base").mkdir(parents=True)
        (folder / "roberta-base" / "vocab.json").write_text("{}")
        ckpt, marker = folder / "x.ckpt", ctx.tmp / "marker"
        if kind == "torchscript":
            save_torchscript_payload(ckpt, marker)
        else:
            write_pickle_payload(ckpt, pickle_payloads(marker)["system"], "torch zip")
        ctx.args += ["--models", "meter-clip16-roberta", "--model-dir", str(ctx.tmp / "models")]
    return breaks


def _nothing_ran(ctx):
    assert not (ctx.tmp / "marker").exists()


def _internal_error(ctx):
    """A defect (not bad input) inside a node: exit 1, the crash file named."""
    import bids_vlm.design.runs

    def broken(*args, **kwargs):
        raise ValueError("simulated defect")
    ctx.monkeypatch.setattr(bids_vlm.design.runs, "unit_regressors", broken)


def _example(name, *args):
    def breaks(ctx):
        shutil.rmtree(ctx.bids)
        shutil.copytree(EXAMPLES / name, ctx.bids)
        ctx.args[:] = list(args)
    return breaks


# --------------------------------------------------------------------------------- cases

CASES = [
    Case("no-dataset-description", "dataset_description.json missing", _no_description, 64,
         "{bids}: not a BIDS dataset: dataset_description.json is missing"),
    Case("no-repetition-time", "sidecar without RepetitionTime", _no_tr, 64,
         f"{RUN1}_bold.nii.gz: RepetitionTime is missing or not positive in the JSON sidecar"),
    Case("empty-nifti", "0-byte BOLD", _empty_nifti, 64,
         f"{RUN1}_{SPACE}_desc-preproc_bold.nii.gz: cannot read the NIfTI image"),
    Case("header-only-nifti", "BOLD .nii.gz holding only its header", _header_only_nifti, 64,
         f"{RUN1}_{SPACE}_desc-preproc_bold.nii.gz: the image is truncated: 352 bytes, "
         "its header needs 86752"),
    Case("truncated-gzip", "BOLD .nii.gz cut off (interrupted copy)", _truncated_gzip, 64,
         f"{RUN1}_{SPACE}_desc-preproc_bold.nii.gz: cannot read the image data, the file is "
         "truncated or corrupted"),
    Case("bold-3d", "3D BOLD", _bold_3d, 64,
         f"{RUN1}_{SPACE}_desc-preproc_bold.nii.gz: BOLD must be a 4D image with at least 2 "
         "volumes, shape is (6, 6, 6)"),
    Case("nan-voxels", "voxels with NaN or inf values (exit 0: excluded from the run)", _nan_voxels,
         0, f"{RUN1}_{SPACE}_desc-preproc_bold.nii.gz: 3 in-mask voxel(s) with NaN or inf "
         "values; excluded from this run (set to 0)", check=_excluded_voxels_check(NAN_VOXELS)),
    Case("constant-voxels", "voxels constant over a run (exit 0: excluded from the run)",
         _constant_voxels, 0, f"{RUN1}_{SPACE}_desc-preproc_bold.nii.gz: 2 in-mask voxel(s) "
         "constant over the run; excluded from it (set to 0)",
         check=_excluded_voxels_check(CONSTANT_VOXELS)),
    Case("events-after-end", "every onset after the run's end (milliseconds?)",
         _events_after_end, 64, f"{RUN1}_events.tsv: every event starts after the end of the "
         "run (200 s = 100 volumes x TR 2 s; onsets in milliseconds?)"),
    Case("some-events-after-end", "some events after the run's end (exit 0: ignored)",
         _some_events_after_end, 0, f"{RUN1}_events.tsv: 2 event(s) start after the run ends "
         "(200.0 s) and are ignored"),
    Case("negative-onset", "negative onset", _negative_onset, 64,
         f"{RUN1}_events.tsv: negative onset on line 2"),
    Case("missing-onset", "onset n/a", _missing_onset, 64,
         f"{RUN1}_events.tsv: column 'onset' is missing (n/a or empty) on line 3"),
    Case("no-onset-column", "events without an onset column", _no_onset_column, 64,
         f"{RUN1}_events.tsv: required column 'onset' is missing (columns: duration, "
         "trial_type, stim_file, caption)"),
    Case("non-numeric-duration", "duration '2s'", _non_numeric_duration, 64,
         f"{RUN1}_events.tsv: column 'duration' must be numeric; line 4 is '2s'"),
    Case("missing-stim-file", "stim_file not under stimuli/", _missing_stim_file, 64,
         "_events.tsv: stim_file 'img03.png' not found under {bids}/stimuli"),
    Case("stim-file-type", "stim_file neither image nor video", _bad_stim_extension, 64,
         f"{RUN1}_events.tsv: stim_file 'img03.psd' is neither an image"),
    Case("unreadable-image", "image file that is not an image", _unreadable_image, 64,
         "stimuli/img03.png: cannot read the image"),
    Case("unreadable-video", "video file that cannot be decoded", _unreadable_video, 64,
         "stimuli/clip.mp4: cannot read the video"),
    Case("non-utf8-tsv", "events.tsv in Latin-1", _non_utf8_events, 64,
         f"{RUN1}_events.tsv: events file is not UTF-8 text"),
    Case("malformed-tsv", "events.tsv row with extra fields", _malformed_tsv, 64,
         f"{RUN1}_events.tsv: malformed TSV: Error tokenizing data. C error: Expected 5 fields "
         "in line 4, saw 7"),
    Case("empty-events-file", "0-byte events.tsv", _empty_events, 64,
         f"{RUN1}_events.tsv: malformed TSV: No columns to parse from file"),
    Case("no-events", "no events.tsv at all", _no_events, 65,
         "{bids}: none of the 2 selected BOLD runs has an events.tsv"),
    Case("header-only-events", "events.tsv with a header and no rows", _header_only_events, 65,
         f"{RUN1}_events.tsv: no stimulus of the selected stream(s) (image) in any selected "
         "run's events"),
    Case("unknown-text-column", "--text-column not in the events", _unknown_text_column, 64,
         f"{RUN1}_events.tsv: text column 'subtitle' is not in the events file"),
    Case("mask-elsewhere", "brain mask in another space (no overlap)", _mask_elsewhere, 64,
         f"{RUN1}_{SPACE}_desc-brain_mask.nii.gz: the brain mask does not overlap the BOLD "
         "image"),
    Case("mask-other-grid", "brain mask on another grid (exit 0: resampled)", _mask_other_grid,
         0, f"{RUN1}_{SPACE}_desc-brain_mask.nii.gz: mask grid differs from the BOLD grid; "
         "resampled (nearest)"),
    Case("empty-mask", "empty brain mask", _empty_mask, 64,
         f"{RUN1}_{SPACE}_desc-brain_mask.nii.gz: the brain mask is empty"),
    Case("runs-on-two-grids", "runs of one unit on different grids", _runs_on_two_grids, 64,
         f"{RUN2}_{SPACE}_desc-preproc_bold.nii.gz: the runs of sub-01_task-view are not on "
         "one grid"),
    Case("confound-rows", "confounds shorter than the BOLD", _confound_rows, 64,
         f"{RUN1}_desc-confounds_timeseries.tsv: confounds have 99 rows but the BOLD has 100 "
         "volumes"),
    Case("confound-text", "non-numeric confound", _confound_text, 64,
         f"{RUN1}_desc-confounds_timeseries.tsv: confound column(s) rot_x hold non-numeric "
         "values"),
    Case("task-without-runs", "--task with no BOLD runs", _unknown_task, 65,
         "{bids}: no BOLD runs match the filters (tasks in the dataset: view;"),
    Case("unknown-participant", "--participant-label not in the dataset", _unknown_participant,
         65, "{bids}: participant(s) 99 not found; the dataset has: 01, 02"),
    Case("conflicting-filters", "--participant-label and a filter file's subject",
         _conflicting_filters, 65,
         "--participant-label conflicts with the 'subject' in the BIDS filter file"),
    Case("filters-select-nothing", "--run that the participant lacks", _filters_select_nothing,
         65, "{bids}: no BOLD runs match the filters"),
    Case("space-not-found", "--space that no derivative has", _space_not_found, 65,
         "--space fsLR: no preprocessed BOLD in that space (spaces found: "
         "MNI152NLin2009cAsym; in {bids}/derivatives/fmriprep)"),
    Case("cifti-smoothing", "--smoothing-fwhm on CIFTI grayordinates (--space fsLR)",
         _cifti_smoothing, 64, "sub-01_task-view_run-1_space-fsLR_den-91k_bold.dtseries.nii: "
         "--smoothing-fwhm 4 is not applied to CIFTI grayordinates"),
    Case("cifti-truncated", "truncated CIFTI time series (--space fsLR)", _cifti_truncated, 64,
         "sub-01_task-view_run-1_space-fsLR_den-91k_bold.dtseries.nii: the CIFTI file is "
         "truncated"),
    Case("cifti-volume-atlas", "--atlas schaefer200 (a volume atlas) on CIFTI grayordinates",
         lambda ctx: (_cifti_smoothing(ctx), ctx.args.extend(
             ["--smoothing-fwhm", "0", "--atlas", "schaefer200"])), 64,
         "--atlas schaefer200: not available on CIFTI grayordinates (shipped there: yeo7, "
         "yeo17; or a label file PATH.dlabel.nii)"),
    Case("cifti-170k-shipped-atlas", "den-170k CIFTI with the shipped (91k) atlas",
         _cifti_170k, 64, "sub-01_task-view_run-1_space-fsLR_den-170k_bold.dtseries.nii: "
         "den-170k: the shipped grayordinate atlases are 91k"),
    Case("cifti-density-disagrees", "--space fsLR:den-170k with --cifti-density 91k",
         lambda ctx: ctx.args.extend(["--space", "fsLR:den-170k", "--cifti-density", "91k"]),
         2, "--space fsLR:den-170k and --cifti-density 91k disagree"),
    Case("invalid-filter-file", "--bids-filter-file not JSON", _invalid_filter_file, 2,
         "filters.json is not valid JSON"),
    Case("output-inside-input", "output_dir inside the input, not under derivatives/",
         _output_inside_input, 2,
         "output_dir inside the BIDS directory must be under its derivatives/"),
    Case("output-is-input", "output_dir = bids_dir", _output_is_input, 2,
         "output_dir must not be the BIDS directory (the input is never written)"),
    Case("output-not-writable", "output_dir that cannot be created", _output_not_writable, 73,
         "/proc/bids_vlm_out: cannot create the output directory"),
    Case("disk-full-output", "output on a full file system (4 kB tmpfs)", _disk_full, 73,
         "/out/dataset_description.json: cannot write the file: No space left on device",
         needs="mount"),
    Case("disk-full-work-dir", "work dir on a full file system (simulated ENOSPC)",
         _disk_full_work_dir, 73,
         "cannot write the intermediate results: No space left on device"),
    Case("corrupted-cache", "garbled activation-cache files (exit 0: recomputed)",
         _corrupted_cache, 0, "corrupted activation cache file (", check=_cache_check),
    Case("truncated-checkpoint", "truncated open_clip_model.safetensors in --model-dir",
         _truncated_checkpoint, 64,
         "models/clip-vit-b-32/open_clip_model.safetensors: cannot load the clip-vit-b-32 "
         "checkpoint"),
    Case("missing-weights", "no local weights for clip-vit-b-32", _missing_weights, 66,
         "weights for clip-vit-b-32 (open_clip ViT-B-32, pretrained 'openai') are not on this "
         "machine"),
    Case("too-little-memory", "--mem too small for one block", _too_little_memory, 69,
         "is too little for"),
    Case("atlas-without-labels", "--atlas image without its labels TSV",
         _atlas_without_labels, 64, "atlas-mine_dseg.tsv: the atlas atlas-mine_dseg.nii.gz needs "
         "a labels TSV next to it"),
    Case("atlas-other-space", "--atlas in another space than the data (exit 0: networks "
         "skipped)", _atlas_other_space, 0, "network analyses skipped: the data are in "
         "MNI152NLin2009cAsym space and the atlas"),
    Case("repetition-time-text", "RepetitionTime \"2s\" (a string)", _tr('"2s"'), 64,
         f'{RUN1}_bold.nii.gz: RepetitionTime must be a number of seconds in the JSON sidecar, '
         'not "2s"'),
    Case("repetition-time-list", "RepetitionTime [2.0] (a list)", _tr("[2.0]"), 64,
         f"{RUN1}_bold.nii.gz: RepetitionTime must be a number of seconds in the JSON sidecar, "
         "not [2.0]"),
    Case("repetition-time-nan", "RepetitionTime NaN", _tr("NaN"), 64,
         f"{RUN1}_bold.nii.gz: RepetitionTime is missing or not positive in the JSON sidecar "
         "(nan)"),
    Case("repetition-time-infinity", "RepetitionTime Infinity", _tr("Infinity"), 64,
         f"{RUN1}_bold.nii.gz: RepetitionTime is missing or not positive in the JSON sidecar "
         "(inf)"),
    Case("repetition-time-ms", "RepetitionTime 2000 (milliseconds)", _tr("2000"), 64,
         f"{RUN1}_bold.nii.gz: RepetitionTime 2000 in the JSON sidecar is not plausible in "
         "seconds (100 volumes would last 55.6 h; the NIfTI header says 2 s); milliseconds? "
         "BIDS wants seconds"),
    Case("repetition-time-header", "NIfTI header TR 2.5 s, sidecar 2 s (exit 0: warning, the "
         "sidecar's is used)", _header_tr, 0, f"{RUN1}_bold.nii.gz: RepetitionTime 2 s in the "
         "JSON sidecar but 2.5 s in the NIfTI header (pixdim[4]); using the sidecar's"),
    Case("infinite-onset", "onset 'inf'", _event_cell("onset", 4, "inf"), 64,
         f"{RUN1}_events.tsv: column 'onset' must be a finite number of seconds; line 4 is "
         "'inf'"),
    Case("infinite-duration", "duration 'inf'", _event_cell("duration", 4, "inf"), 64,
         f"{RUN1}_events.tsv: column 'duration' must be a finite number of seconds; line 4 is "
         "'inf'"),
    Case("negative-duration", "negative duration", _event_cell("duration", 3, "-2"), 64,
         f"{RUN1}_events.tsv: negative duration on line 3"),
    Case("nul-in-text", "a NUL byte in a caption", _event_cell("caption", 5, "a\x00dog"), 64,
         f"{RUN1}_events.tsv: column 'caption' on line 5 holds the control character '\\x00' "
         "(a NUL byte or binary data in a text file?)"),
    Case("filter-not-an-object", "--bids-filter-file {\"bold\": \"x\"}",
         _filter_file({"bold": "x"}), 2, "filters.json: the filters of 'bold' must be a JSON "
         "object of BIDS entities"),
    Case("filter-unknown-entity", "--bids-filter-file with an unknown entity",
         _filter_file({"bold": {"acq": "25mm"}}), 2,
         "filters.json: 'bold' filters on unknown BIDS entity acq (known: acquisition,"),
    Case("confound-inf", "confound value inf", _confound_inf, 64,
         f"{RUN1}_desc-confounds_timeseries.tsv: confound column(s) rot_y hold infinite values"),
    Case("empty-confounds", "0-byte confounds file", _empty_confounds, 64,
         f"{RUN1}_desc-confounds_timeseries.tsv: cannot read the confounds table: No columns "
         "to parse from file"),
    Case("two-volume-run", "raw BOLD with 2 volumes", _raw_two_volumes, 64,
         f"{RUN1}_bold.nii.gz: the run is too short to analyse: 2 volumes, of which the "
         "cleaning (detrending, high-pass, 0 confounds) removes 2; at least 12 are needed"),
    Case("singular-affine", "BOLD whose affine is singular", _singular_affine, 64,
         f"{RUN1}_{SPACE}_desc-preproc_bold.nii.gz: the image's affine (voxel-to-world matrix) "
         "is singular or not finite"),
    Case("negative-fir-delay", "--fir-delays -3", lambda ctx: ctx.args.extend(
        ["--hrf-model", "fir", "--fir-delays", "-3"]), 2,
         "argument --fir-delays: must be 0 or a positive integer, not -3"),
    Case("negative-text-window", "--text-window -5", lambda ctx: ctx.args.extend(
        ["--text-window", "-5"]), 2,
         "argument --text-window: must be 0 or a positive number, not -5"),
    Case("banded-layers-word", "--banded-layers deep", lambda ctx: ctx.args.extend(
        ["--banded-layers", "deep"]), 2,
         "argument --banded-layers: expected all, last, none or a layer index (0 or more), "
         "not deep"),
    Case("banded-layers-all-and-index", "--banded-layers all 3", lambda ctx: ctx.args.extend(
        ["--banded-layers", "all", "3"]), 2, "--banded-layers all 3: all stands alone"),
    Case("stimulus-directory", "stim_file naming a directory", _stimulus_directory, 64,
         "is a directory, not an image or video file"),
    Case("stimulus-fifo", "stim_file naming a FIFO", _stimulus_fifo, 64,
         "is not a regular file (a FIFO, socket or device?)"),
    Case("stimulus-dotdot", "stim_file '../x.png' (outside stimuli/)",
         _event_cell("stim_file", 3, "../sub-01/x.png"), 64,
         f"{RUN1}_events.tsv: stim_file '../sub-01/x.png' on line 3 is outside the stimuli "
         "folder {bids}/stimuli"),
    Case("stimulus-absolute", "stim_file with an absolute path",
         _event_cell("stim_file", 3, "/etc/x.png"), 64,
         f"{RUN1}_events.tsv: stim_file '/etc/x.png' on line 3 is outside the stimuli folder "
         "{bids}/stimuli"),
    Case("stimulus-symlink-out", "stimuli/ file that is a symbolic link out of it",
         _stimulus_symlink_out, 64, "secret.png, outside the stimuli folder {bids}/stimuli; "
         "nothing outside it is read (copy the file into it)"),
    Case("bids-dir-is-file", "bids_dir that is a file", _bids_dir_is_file, 2,
         "argument bids_dir: not a directory: "),
    Case("work-dir-full", "work dir on a full file system (200 kB tmpfs)", _work_dir_full, 73,
         "cannot write the intermediate results: No space left on device", needs="mount"),
    Case("torchscript-checkpoint", "METER checkpoint that is a TorchScript archive (runs code)",
         _meter_payload("torchscript"), 64, "meter-clip16-roberta/x.ckpt: a TorchScript "
         "archive (it holds ", check=_nothing_ran),
    Case("pickle-checkpoint", "METER checkpoint whose pickle calls os.system",
         _meter_payload("pickle"), 64, "meter-clip16-roberta/x.ckpt: the checkpoint asks to "
         "call 'posix.system' while loading", check=_nothing_ran),
    Case("internal-error", "a defect inside a pipeline step (not bad input)", _internal_error, 1,
         "a pipeline step failed: ValueError: simulated defect (details: "),
    Case("bids-examples-ds001", "bids-examples ds001 (0-byte NIfTI stubs)",
         _example("ds001", "--participant-label", "01"), 64,
         "sub-01_task-balloonanalogrisktask_run-01_bold.nii.gz: cannot read the NIfTI image",
         needs="shared"),
    Case("bids-examples-synthetic", "bids-examples synthetic (header-only .nii derivatives)",
         _example("synthetic", "--participant-label", "01", "--task", "nback"), 64,
         "_desc-preproc_bold.nii: the image is truncated", needs="shared"),
    Case("bids-examples-ds114-task", "bids-examples ds114, a task it does not have",
         _example("ds114", "--task", "nback"), 65,
         "no BOLD runs match the filters (tasks in the dataset: covertverbgeneration, "
         "fingerfootlips, linebisection, overtverbgeneration, overtwordrepetition;",
         needs="shared"),
]


def _listing(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, planted, tmp_path, capsys, caplog, monkeypatch):
    if case.needs == "shared" and not EXAMPLES.is_dir():
        pytest.skip("../shared/data/bids-examples is not present (developers' machines only)")
    ctx = Ctx(bids=tmp_path / "bids", tmp=tmp_path, out=tmp_path / "out", args=list(ARGS))
    ctx.monkeypatch = monkeypatch
    shutil.copytree(planted.root, ctx.bids)
    caplog.set_level(logging.INFO)
    try:
        case.breaks(ctx)
        before = _listing(ctx.bids)
        capsys.readouterr()
        caplog.clear()
        try:
            code = main([str(ctx.bids), str(ctx.out), "participant", *ctx.args, "-q",
                         "-w", str(tmp_path / "work")])
        except SystemExit as exc:  # argparse
            code = exc.code
        err = capsys.readouterr().err + caplog.text
        assert code == case.code, err
        assert case.message.format(bids=ctx.bids) in err, err
        assert "Traceback" not in err, err
        if ctx.bids.is_dir() and ctx.out != ctx.bids:
            assert _listing(ctx.bids) == before  # the input is never written
        if ctx.out.is_dir() and ctx.out != ctx.bids:
            assert not [p for p in ctx.out.rglob("*") if ".tmp" in p.name]  # no partial files
            if code:
                assert not list(ctx.out.glob("sub-*/func/*"))
        if case.check:
            case.check(ctx)
    finally:
        for finalize in ctx.finalizers:
            finalize()


def test_catalogue_has_at_least_25_cases_with_distinct_ids():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert len([c for c in CASES if c.code]) >= 25


def readme_rows() -> list[str]:
    """The README's bad-input table rows, one per case."""
    rows = []
    for case in CASES:
        message = case.message.format(bids="<bids_dir>").replace("|", "\\|")
        rows.append(f"| `{case.id}` | {case.what} | {case.code} | `{message}` |")
    return rows


def test_readme_table_matches_the_catalogue():
    text = (REPO / "README.md").read_text()
    missing = [row for row in readme_rows() if row not in text]
    assert not missing, "update the README's bad-input table:\n" + "\n".join(missing)


def test_disk_full_while_writing_an_output_leaves_no_partial_file(tmp_path, monkeypatch):
    """ENOSPC in the middle of writing: exit code 73, the file named, nothing left behind,
    and an older complete version of the file is kept."""
    from bids_vlm.derivatives import write_tsv
    from bids_vlm.errors import EXIT_OUTPUT, OutputError

    path = tmp_path / "sub-01_neurons.tsv"
    write_tsv(path, pd.DataFrame({"a": [1, 2]}))
    old = path.read_bytes()

    def to_csv_then_full(self, target, **kwargs):
        Path(target).write_text("a\n1\n")  # part of the table, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv_then_full)
    with pytest.raises(OutputError) as exc:
        write_tsv(path, pd.DataFrame({"a": range(1000)}))
    assert exc.value.exit_code == EXIT_OUTPUT == 73
    assert str(exc.value) == f"{path}: cannot write the file: No space left on device"
    assert path.read_bytes() == old and sorted(tmp_path.iterdir()) == [path]


def test_each_warning_once_and_no_third_party_info(planted, tmp_path, caplog):
    """Events after the run's end are reported once per run (not again by the graph), and
    other libraries' INFO lines (open_clip logs through the root logger) stay out of the log
    unless -v; bids_vlm's own INFO lines stay."""
    ctx = Ctx(bids=tmp_path / "bids", tmp=tmp_path, out=tmp_path / "out")
    shutil.copytree(planted.root, ctx.bids)
    _some_events_after_end(ctx)
    caplog.set_level(logging.DEBUG)
    assert main([str(ctx.bids), str(ctx.out), "participant", *ARGS,
                 "-w", str(tmp_path / "work")]) == 0
    late = [r for r in caplog.records if "start after the run ends" in r.getMessage()]
    assert len(late) == 1 and f"{RUN1}_events.tsv" in late[0].getMessage()
    info = [r for r in caplog.records if r.levelno < logging.WARNING]
    assert not [r for r in info if not r.name.startswith("bids_vlm")], \
        [(r.name, r.getMessage()) for r in info if not r.name.startswith("bids_vlm")][:5]
    assert logging.getLogger("bids_vlm.inputs.stimuli").isEnabledFor(logging.INFO)
    for name in ("open_clip", "transformers", "root"):  # open_clip logs via the root logger
        assert not logging.getLogger(None if name == "root" else name).isEnabledFor(logging.INFO)
    assert main([str(ctx.bids), str(tmp_path / "out_v"), "participant", *ARGS, "-v",
                 "-w", str(tmp_path / "work_v")]) == 0
    assert logging.getLogger("open_clip").isEnabledFor(logging.INFO)
    assert logging.getLogger().isEnabledFor(logging.INFO)
