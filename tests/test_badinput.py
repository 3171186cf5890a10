"""The bad-input catalogue: every broken input gives its documented exit code and a message
naming the file and the problem, the input is never written, and no half-written output stays.

Each case copies the planted dataset (tests/datagen.py), breaks one thing and runs the CLI
in-process (``bids_vlm.cli.main``). The README's "Bad inputs" table is made from ``CASES``
(:func:`readme_rows`), and a test checks that they agree.
"""
from __future__ import annotations

import errno
import json
import logging
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

from bids_vlm.cli import main

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
         "/out/.bidsignore: cannot write the file: No space left on device", needs="mount"),
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
