"""Stage 1: finding the runs of a BIDS dataset and their derivatives (bids_vlm/inputs/bids.py)."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from datagen import SPACE, make_planted_dataset

from bids_vlm.inputs import bids as bids_mod
from bids_vlm.inputs.bids import RunSpec, collect_runs, load_layout, run_from_dict
from bids_vlm.config import RunFilter
from bids_vlm.cli.demo import DEMO_DATASET
from bids_vlm.errors import EXIT_DATA, EXIT_NO_INPUT, DataError, NoInputError
from bids_vlm.design.regressors import frame_times

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bids-examples"
N_SCANS = 20


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A small planted dataset (2 subjects x 2 runs x 20 scans), generated once per module."""
    return make_planted_dataset(tmp_path_factory.mktemp("bids_template") / "bids",
                                n_subjects=2, n_runs=2, n_scans=N_SCANS)


@pytest.fixture
def root(template, tmp_path) -> Path:
    """A private, modifiable copy of the template dataset."""
    dest = tmp_path / "bids"
    shutil.copytree(template.root, dest)
    return dest


@pytest.fixture
def empty_derivative(tmp_path) -> Path:
    """A derivative dataset with no files (makes pybids load its derivatives entities)."""
    path = tmp_path / "empty_derivative"
    path.mkdir()
    (path / "dataset_description.json").write_text(json.dumps(
        {"Name": "empty", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "tests"}]}))
    return path


@pytest.fixture
def examples() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip("../shared/data/bids-examples is not present (only developers' machines "
                    "have it)")
    return EXAMPLES


def _stem(sub, run):
    return f"sub-{sub}_task-view_run-{run}"


def _raw(root, sub, run, suffix):
    return root / f"sub-{sub}" / "func" / f"{_stem(sub, run)}_{suffix}"


def _fmriprep(root, sub, run, name):
    return root / "derivatives" / "fmriprep" / f"sub-{sub}" / "func" / f"{_stem(sub, run)}_{name}"


def _collect(root, filters=RunFilter(), **kwargs):
    return collect_runs(load_layout(root, **kwargs), filters)


# --------------------------------------------------------------------------- planted dataset

def test_collect_runs_on_fmriprep_like_dataset(root):
    runs = _collect(root)
    assert [(r.subject, r.run) for r in runs] == [("01", 1), ("01", 2), ("02", 1), ("02", 2)]
    for r in runs:
        sub, run = r.subject, r.run
        assert isinstance(r, RunSpec)
        assert r.task == "view" and r.session is None and r.acquisition is None
        assert r.tr == 2.0 and isinstance(r.tr, float)
        assert r.n_scans == N_SCANS
        assert r.preprocessed is True
        assert r.space == SPACE
        assert Path(r.bold) == _fmriprep(root, sub, run, f"space-{SPACE}_desc-preproc_bold.nii.gz")
        assert Path(r.bold).is_relative_to(root / "derivatives" / "fmriprep")
        assert Path(r.mask) == _fmriprep(root, sub, run, f"space-{SPACE}_desc-brain_mask.nii.gz")
        assert Path(r.confounds) == _fmriprep(root, sub, run, "desc-confounds_timeseries.tsv")
        assert Path(r.events) == _raw(root, sub, run, "events.tsv")
        assert r.label == f"sub-{sub}_task-view_run-{run}"
        assert re.fullmatch(r"[0-9a-f]{16}", r.fingerprint)
        assert run_from_dict(r.to_dict()) == r
    assert len({r.fingerprint for r in runs}) == 4


def test_collect_runs_is_deterministic(root):
    assert _collect(root) == _collect(root)


@pytest.mark.parametrize("labels, expected", [
    (("01",), [("01", 1), ("01", 2)]),
    (("sub-01",), [("01", 1), ("01", 2)]),
    (("sub-02",), [("02", 1), ("02", 2)]),
    (("sub-01", "02"), [("01", 1), ("01", 2), ("02", 1), ("02", 2)]),
])
def test_participant_filter_with_and_without_prefix(root, labels, expected):
    runs = _collect(root, RunFilter(participant_label=labels))
    assert [(r.subject, r.run) for r in runs] == expected


def test_run_filter(root):
    runs = _collect(root, RunFilter(run=(2,)))
    assert [(r.subject, r.run) for r in runs] == [("01", 2), ("02", 2)]
    runs = _collect(root, RunFilter(participant_label=("02",), run=("1",)))
    assert [(r.subject, r.run) for r in runs] == [("02", 1)]


def test_task_filter(root):
    runs = _collect(root, RunFilter(task=("view",)))
    assert len(runs) == 4 and {r.task for r in runs} == {"view"}


def test_bids_filter_file_contents(root):
    runs = _collect(root, RunFilter(bids_filters=json.dumps({"bold": {"run": 1}})))
    assert [(r.subject, r.run) for r in runs] == [("01", 1), ("02", 1)]
    # suffix / extension / datatype in the filter file are ignored (bids_vlm sets them)
    runs = _collect(root, RunFilter(bids_filters=json.dumps(
        {"bold": {"subject": "02", "suffix": "T1w", "extension": ".json", "datatype": "anat"}})))
    assert [(r.subject, r.run) for r in runs] == [("02", 1), ("02", 2)]
    # filters for other queries than "bold" do not restrict the runs
    runs = _collect(root, RunFilter(bids_filters=json.dumps({"t1w": {"subject": "01"}})))
    assert len(runs) == 4


@pytest.mark.parametrize("filters, key", [
    (RunFilter(run=(1,), bids_filters=json.dumps({"bold": {"run": 1}})), "run"),
    (RunFilter(participant_label=("01",), bids_filters=json.dumps({"bold": {"subject": "01"}})),
     "subject"),
    (RunFilter(task=("view",), bids_filters=json.dumps({"bold": {"task": "view"}})), "task"),
])
def test_conflicting_filters_raise_no_input(root, filters, key):
    layout = load_layout(root)
    with pytest.raises(NoInputError, match=f"'{key}' in the BIDS filter file") as exc:
        collect_runs(layout, filters)
    assert exc.value.exit_code == EXIT_NO_INPUT


def test_unknown_participant_lists_existing_subjects(root):
    with pytest.raises(NoInputError) as exc:
        _collect(root, RunFilter(participant_label=("sub-99", "98")))
    msg = str(exc.value)
    assert "participant(s) 99, 98 not found" in msg
    assert "the dataset has: 01, 02" in msg
    assert exc.value.path == str(root)
    assert exc.value.exit_code == EXIT_NO_INPUT


def test_unknown_participant_next_to_a_known_one(root):
    with pytest.raises(NoInputError, match="participant\\(s\\) 99 not found"):
        _collect(root, RunFilter(participant_label=("sub-99", "01")))


def test_unknown_task_lists_tasks(root):
    with pytest.raises(NoInputError) as exc:
        _collect(root, RunFilter(task=("rest",)))
    msg = str(exc.value)
    assert "no BOLD runs match the filters" in msg
    assert "tasks in the dataset: view" in msg
    assert "task=('rest',)" in msg
    assert exc.value.exit_code == EXIT_NO_INPUT


def test_run_filter_matching_nothing(root):
    with pytest.raises(NoInputError, match=r"tasks in the dataset: view; filters: run=\(7,\)"):
        _collect(root, RunFilter(run=(7,)))


def test_runs_without_events_are_skipped(root, caplog):
    """A subject without any events.tsv loses its runs; the others are kept."""
    for run in (1, 2):
        _raw(root, "01", run, "events.tsv").unlink()
    with caplog.at_level(logging.WARNING, logger="bids_vlm.inputs.bids"):
        runs = _collect(root)
    assert [(r.subject, r.run) for r in runs] == [("02", 1), ("02", 2)]
    skipped = [rec.getMessage() for rec in caplog.records if "no events.tsv" in rec.getMessage()]
    assert len(skipped) == 2
    assert all("sub-01_task-view_run-" in m and "run skipped" in m for m in skipped)


def test_run_without_events_is_skipped_not_given_another_runs_events(root):
    _raw(root, "01", 1, "events.tsv").unlink()
    runs = _collect(root)
    assert [(r.subject, r.run) for r in runs] == [("01", 2), ("02", 1), ("02", 2)]
    for r in runs:
        assert Path(r.events) == _raw(root, r.subject, r.run, "events.tsv")


def test_no_run_with_events_raises_no_input(root):
    for events in root.glob("sub-*/func/*_events.tsv"):
        events.unlink()
    with pytest.raises(NoInputError, match="none of the 4 selected BOLD runs has an events.tsv"):
        _collect(root)


def _make_raw(root):
    shutil.rmtree(root / "derivatives")


def _check_raw_runs(root, runs):
    assert [(r.subject, r.run) for r in runs] == [("01", 1), ("01", 2), ("02", 1), ("02", 2)]
    for r in runs:
        assert r.preprocessed is False
        assert r.mask is None and r.confounds is None and r.space is None
        assert Path(r.bold) == _raw(root, r.subject, r.run, "bold.nii.gz")
        assert r.tr == 2.0 and r.n_scans == N_SCANS


def test_raw_dataset_without_derivatives(root):
    _make_raw(root)
    _check_raw_runs(root, _collect(root))


def test_raw_dataset_with_an_empty_derivative_dataset(root, empty_derivative):
    """No preprocessed files in the given derivatives: the raw BOLD is analysed, no mask."""
    _make_raw(root)
    _check_raw_runs(root, _collect(root, derivatives=[empty_derivative]))


def test_explicit_derivatives_replace_the_default_ones(root, empty_derivative):
    runs = _collect(root, derivatives=[empty_derivative])
    assert not any(r.preprocessed for r in runs)
    runs = _collect(root, derivatives=[root / "derivatives" / "fmriprep"])
    assert all(r.preprocessed for r in runs)


def test_missing_repetition_time_names_the_bold(root):
    (root / "task-view_bold.json").write_text(json.dumps({"TaskName": "view"}))
    with pytest.raises(DataError, match="RepetitionTime is missing") as exc:
        _collect(root)
    assert exc.value.path == str(_raw(root, "01", 1, "bold.nii.gz"))
    assert exc.value.path in str(exc.value)
    assert exc.value.exit_code == EXIT_DATA


def test_non_positive_repetition_time(root):
    (root / "task-view_bold.json").write_text(json.dumps({"TaskName": "view",
                                                          "RepetitionTime": 0}))
    with pytest.raises(DataError, match="not positive"):
        _collect(root)


# --------------------------------------------------------------------------- slice timing

PREPROC = f"space-{SPACE}_desc-preproc_bold"


def _sidecar(path, **fields):
    """Write ``fields`` into the JSON sidecar ``path`` (.json next to a .nii.gz), keeping any
    fields already there; returns its path."""
    path = Path(str(path).replace(".nii.gz", "") + ("" if str(path).endswith(".json")
                                                   else ".json"))
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **fields}))
    return path


def _refs(runs):
    return {(r.subject, r.run): r.slice_time_ref for r in runs}


def test_fmriprep_start_time_is_the_slice_time_reference(root):
    """fMRIPrep corrected slice timing of sub-01 run-1 to 0.9 s (TR 2): its frames are at 0.9,
    2.9, ...; the raw SliceTiming (inherited from the top-level sidecar) only serves the runs
    whose preprocessed sidecar does not say they were corrected."""
    _sidecar(root / "task-view_bold.json", SliceTiming=[0, 1, 0.5, 1.5])
    _sidecar(_fmriprep(root, "01", 1, PREPROC), RepetitionTime=2.0, SliceTimingCorrected=True,
             StartTime=0.9)
    _sidecar(_fmriprep(root, "01", 2, PREPROC), RepetitionTime=2.0, SliceTimingCorrected=False)
    runs = _collect(root)
    assert _refs(runs) == {("01", 1): 0.9, ("01", 2): 0.75, ("02", 1): 0.75, ("02", 2): 0.75}
    first = runs[0]
    assert first.preprocessed and isinstance(first.slice_time_ref, float)
    np.testing.assert_allclose(frame_times(first.n_scans, first.tr, first.slice_time_ref)[:3],
                               [0.9, 2.9, 4.9])
    assert run_from_dict(first.to_dict()) == first


def test_raw_slice_timing_gives_the_mean_slice_time(root):
    """Not slice-time corrected: each slice at its own time, the mean slice time for the
    volume (0.75 s for [0, 1, 0.5, 1.5] at TR 2); a run's own sidecar overrides the
    top-level one (BIDS inheritance)."""
    _make_raw(root)
    _sidecar(root / "task-view_bold.json", SliceTiming=[0, 1, 0.5, 1.5])
    _sidecar(_raw(root, "02", 2, "bold.json"), SliceTiming=[0.0, 0.2, 0.4, 0.6])  # sparse
    runs = _collect(root)
    assert _refs(runs) == pytest.approx({("01", 1): 0.75, ("01", 2): 0.75, ("02", 1): 0.75,
                                         ("02", 2): 0.3})
    np.testing.assert_allclose(frame_times(runs[0].n_scans, runs[0].tr,
                                           runs[0].slice_time_ref)[:3], [0.75, 2.75, 4.75])


def test_corrected_without_start_time_uses_the_middle_of_slice_timing(root, caplog):
    """Another pipeline's SliceTimingCorrected without StartTime: fMRIPrep's default reference,
    the middle of the SliceTiming range (not its mean), with a warning."""
    _sidecar(root / "task-view_bold.json", SliceTiming=[0, 1, 0.2, 1.5])
    for sub, run in (("01", 1), ("01", 2), ("02", 1), ("02", 2)):
        _sidecar(_fmriprep(root, sub, run, PREPROC), SliceTimingCorrected=True)
    with caplog.at_level(logging.WARNING, logger="bids_vlm.inputs.bids"):
        runs = _collect(root, RunFilter(participant_label=("01",), run=(1,)))
    assert runs[0].slice_time_ref == 0.75
    assert any("StartTime" in rec.getMessage() and "is missing" in rec.getMessage()
               for rec in caplog.records)


def test_no_slice_timing_information_means_the_volume_onset(root, caplog):
    with caplog.at_level(logging.INFO, logger="bids_vlm.inputs.bids"):
        runs = _collect(root)
    assert all(r.slice_time_ref == 0.0 for r in runs)
    np.testing.assert_allclose(frame_times(N_SCANS, 2.0, runs[0].slice_time_ref)[:3],
                               [0.0, 2.0, 4.0])
    info = [rec.getMessage() for rec in caplog.records
            if rec.levelno == logging.INFO and "no slice timing information" in rec.getMessage()]
    assert len(info) == 4 and all("volume onsets" in m for m in info)


@pytest.mark.parametrize("fields, key", [
    ({"SliceTimingCorrected": True, "StartTime": 2.0}, "StartTime"),  # = TR
    ({"SliceTimingCorrected": True, "StartTime": 900}, "StartTime"),  # milliseconds
    ({"SliceTimingCorrected": True, "StartTime": -0.1}, "StartTime"),
    ({"SliceTimingCorrected": True, "StartTime": "0.9"}, "StartTime"),
    ({"SliceTimingCorrected": True, "StartTime": float("nan")}, "StartTime"),
    ({"SliceTimingCorrected": "yes", "StartTime": 0.9}, "SliceTimingCorrected"),
])
def test_bad_start_time_names_the_derivative_sidecar(root, fields, key):
    sidecar = _sidecar(_fmriprep(root, "02", 1, PREPROC), RepetitionTime=2.0, **fields)
    with pytest.raises(DataError, match=key) as exc:
        _collect(root)
    assert exc.value.path == str(sidecar) and exc.value.exit_code == EXIT_DATA


@pytest.mark.parametrize("slice_timing", [
    [0, 1000, 500, 1500],  # milliseconds
    [0, 1, 2.0],  # = TR
    [0, -0.5],
    [0, None],
    [0, float("inf")],
    "0 1 0.5 1.5",
])
def test_bad_slice_timing_names_the_sidecar_that_holds_it(root, slice_timing):
    """The error names the inherited top-level sidecar, where SliceTiming is."""
    _make_raw(root)
    sidecar = _sidecar(root / "task-view_bold.json", SliceTiming=slice_timing)
    with pytest.raises(DataError, match="SliceTiming") as exc:
        _collect(root)
    assert exc.value.path == str(sidecar) and str(sidecar) in str(exc.value)


def test_raw_slice_timing_is_not_checked_when_start_time_is_used(root):
    """fMRIPrep's StartTime decides; the raw SliceTiming is then not read."""
    _sidecar(root / "task-view_bold.json", SliceTiming="not used")
    for sub, run in (("01", 1), ("01", 2), ("02", 1), ("02", 2)):
        _sidecar(_fmriprep(root, sub, run, PREPROC), SliceTimingCorrected=True, StartTime=1.0)
    assert set(_refs(_collect(root)).values()) == {1.0}


def test_old_run_dicts_without_slice_time_ref_still_load(root):
    run = _collect(root)[0]
    old = run.to_dict()
    del old["slice_time_ref"]
    loaded = run_from_dict(old)
    assert loaded.slice_time_ref == 0.0 and loaded == run
    shifted = RunSpec(**{**old, "slice_time_ref": 0.9})
    assert run_from_dict(json.loads(json.dumps(shifted.to_dict()))) == shifted


def test_fingerprint_changes_when_the_slice_time_reference_changes(root):
    before = {r.label: r.fingerprint for r in _collect(root)}
    _sidecar(_fmriprep(root, "01", 2, PREPROC), SliceTimingCorrected=True, StartTime=0.9)
    after = {r.label: r.fingerprint for r in _collect(root)}
    assert {k for k in before if before[k] != after[k]} == {"sub-01_task-view_run-2"}


@pytest.mark.parametrize("shape", [(6, 6, 6), (6, 6, 6, 1)])
def test_bold_that_is_not_a_time_series(root, shape):
    bad = _fmriprep(root, "02", 2, f"space-{SPACE}_desc-preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), bad)
    with pytest.raises(DataError, match="4D image with at least 2 volumes") as exc:
        _collect(root)
    assert f"shape is {shape}" in str(exc.value)
    assert exc.value.path == str(bad)


def test_complete_gzip_bold_is_not_decompressed_but_a_cut_one_is_caught(tmp_path,
                                                                        monkeypatch):
    import gzip

    path = tmp_path / "bold.nii.gz"
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with monkeypatch.context() as patch:  # the gzip trailer is enough for a complete file
        patch.setattr(gzip, "open", lambda *a, **k: pytest.fail("decompressed"))
        assert bids_mod._n_scans(path)[0] == 5
    header_only = tmp_path / "header_only.nii.gz"
    with gzip.open(header_only, "wb") as handle:
        handle.write(gzip.open(path).read()[:352])
    with pytest.raises(DataError, match="the image is truncated: 352 bytes, its header needs 10592"):
        bids_mod._n_scans(header_only)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[:5000])  # an interrupted copy
    with pytest.raises(DataError, match="cannot read the image data, the file is truncated"):
        bids_mod._n_scans(cut)


def test_directory_without_dataset_description(tmp_path):
    (tmp_path / "sub-01").mkdir()
    with pytest.raises(DataError, match="dataset_description.json is missing") as exc:
        load_layout(tmp_path)
    assert exc.value.path == str(tmp_path) and exc.value.exit_code == EXIT_DATA


def test_fingerprint_changes_when_events_change(root):
    before = {r.label: r.fingerprint for r in _collect(root)}
    events = _raw(root, "01", 2, "events.tsv")
    table = pd.read_csv(events, sep="\t")
    table.loc[0, "caption"] = "a completely different caption"
    table.to_csv(events, sep="\t", index=False)
    mtime = os.stat(events).st_mtime_ns + 5_000_000_000
    os.utime(events, ns=(mtime, mtime))
    after = {r.label: r.fingerprint for r in _collect(root)}
    assert after.keys() == before.keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"sub-01_task-view_run-2"}


def test_fingerprint_changes_when_only_mtime_changes(root):
    before = {r.label: r.fingerprint for r in _collect(root)}
    mask = _fmriprep(root, "02", 1, f"space-{SPACE}_desc-brain_mask.nii.gz")
    mtime = os.stat(mask).st_mtime_ns + 5_000_000_000
    os.utime(mask, ns=(mtime, mtime))
    after = {r.label: r.fingerprint for r in _collect(root)}
    assert {k for k in before if before[k] != after[k]} == {"sub-02_task-view_run-1"}


def test_runs_are_sorted_numerically(root):
    for suffix in ("bold.nii.gz", "events.tsv"):
        shutil.copy(_raw(root, "01", 2, suffix), _raw(root, "01", 10, suffix))
    for name in (f"space-{SPACE}_desc-preproc_bold.nii.gz",
                 f"space-{SPACE}_desc-brain_mask.nii.gz", "desc-confounds_timeseries.tsv"):
        shutil.copy(_fmriprep(root, "01", 2, name), _fmriprep(root, "01", 10, name))
    runs = _collect(root, RunFilter(participant_label=("01",)))
    assert [r.run for r in runs] == [1, 2, 10]


# --------------------------------------------------------------------------- bids-examples

def test_ds001_empty_stub_images_raise_data_error(examples):
    layout = load_layout(examples / "ds001")
    with pytest.raises(DataError, match="cannot read the NIfTI image"):
        collect_runs(layout, RunFilter(participant_label=("01",)))


def test_ds001_empty_stub_images_raise_data_error_with_derivatives(examples, empty_derivative):
    layout = load_layout(examples / "ds001", derivatives=[empty_derivative])
    with pytest.raises(DataError, match="cannot read the NIfTI image") as exc:
        collect_runs(layout, RunFilter(participant_label=("sub-01",)))
    expected = examples / "ds001/sub-01/func/sub-01_task-balloonanalogrisktask_run-01_bold.nii.gz"
    assert exc.value.path == str(expected)
    assert str(expected) in str(exc.value)
    assert exc.value.exit_code == EXIT_DATA


def test_ds001_unknown_participant_lists_16_subjects(examples):
    with pytest.raises(NoInputError) as exc:
        collect_runs(load_layout(examples / "ds001"), RunFilter(participant_label=("42",)))
    assert "the dataset has: " + ", ".join(f"{i:02d}" for i in range(1, 17)) in str(exc.value)


@pytest.fixture
def header_only_scans(monkeypatch):
    """The bids-examples images are empty stubs: pretend every image has 10 volumes."""
    monkeypatch.setattr(bids_mod, "_n_scans", lambda path: (10, 0.0))


def test_ds105_runs_events_and_tr(examples, empty_derivative, header_only_scans):
    layout = load_layout(examples / "ds105", derivatives=[empty_derivative])
    runs = collect_runs(layout, RunFilter(participant_label=("1",)))
    assert [r.run for r in runs] == list(range(1, 13))
    for r in runs:
        assert r.subject == "1" and r.task == "objectviewing" and r.tr == 2.5
        assert Path(r.events).name == f"sub-1_task-objectviewing_run-{r.run:02d}_events.tsv"
        assert r.preprocessed is False and r.mask is None


def test_ds114_session_and_task_filters(examples, empty_derivative, header_only_scans):
    layout = load_layout(examples / "ds114", derivatives=[empty_derivative])
    runs = collect_runs(layout, RunFilter(participant_label=("01",), session_label=("ses-test",)))
    assert [(r.session, r.task) for r in runs] == [
        ("test", t) for t in ("covertverbgeneration", "fingerfootlips", "linebisection",
                              "overtverbgeneration", "overtwordrepetition")]
    assert [r.tr for r in runs] == [2.5, 2.5, 2.5, 5.0, 5.0]  # inherited task sidecars
    # SliceTiming 0 .. 2.417 s (30 slices) in every task: the mean slice time, 1.208 s, also at
    # TR 5 (a sparse acquisition: half a TR, 2.5 s, would fall in the silent gap)
    assert [r.slice_time_ref for r in runs] == pytest.approx([29 / 12 / 2] * 5)
    assert all(r.run is None for r in runs)
    assert runs[0].label == "sub-01_ses-test_task-covertverbgeneration"
    runs = collect_runs(layout, RunFilter(participant_label=("01", "02"), session_label=("retest",),
                                          task=("fingerfootlips",)))
    assert [(r.subject, r.session, r.task) for r in runs] == [
        ("01", "retest", "fingerfootlips"), ("02", "retest", "fingerfootlips")]


def test_ds114_events_are_those_of_the_runs_task(examples, empty_derivative, header_only_scans):
    layout = load_layout(examples / "ds114", derivatives=[empty_derivative])
    runs = collect_runs(layout, RunFilter(participant_label=("01",), session_label=("test",)))
    for r in runs:
        if r.task == "linebisection":
            expected = examples / "ds114/sub-01/ses-test/func/" \
                "sub-01_ses-test_task-linebisection_events.tsv"
        else:
            expected = examples / "ds114" / f"task-{r.task}_events.tsv"
        assert Path(r.events) == expected


def test_synthetic_prefers_mni_preprocessed_bold(examples, header_only_scans):
    layout = load_layout(examples / "synthetic")
    runs = collect_runs(layout, RunFilter(participant_label=("01",), task=("nback",)))
    assert [(r.session, r.run) for r in runs] == [("01", 1), ("01", 2), ("02", 1), ("02", 2)]
    for r in runs:
        assert r.preprocessed and r.space == "MNI152NLin2009cAsym" and r.tr == 2.5
        assert Path(r.bold).name.endswith("_space-MNI152NLin2009cAsym_desc-preproc_bold.nii")
        assert Path(r.events) == examples / "synthetic" / "task-nback_events.tsv"
    t1w = collect_runs(layout, RunFilter(participant_label=("01",), task=("nback",)), space="T1w")
    assert {r.space for r in t1w} == {"T1w"}


def test_synthetic_rest_runs_without_events_are_skipped(examples, header_only_scans):
    runs = collect_runs(load_layout(examples / "synthetic"), RunFilter(participant_label=("01",)))
    assert {r.task for r in runs} == {"nback"}


def test_synthetic_header_only_images_raise_data_error(examples):
    layout = load_layout(examples / "synthetic")
    with pytest.raises(DataError, match="the image is truncated"):
        collect_runs(layout, RunFilter(participant_label=("01",), task=("nback",)))


# --------------------------------------------------------------------------- demo data

def test_embedded_demo_dataset():
    runs = collect_runs(load_layout(DEMO_DATASET), RunFilter())
    assert [r.run for r in runs] == list(range(1, 13))
    mask = (DEMO_DATASET / "derivatives" / "masks" / "sub-1" /
            "sub-1_acq-25mm_desc-brain_mask.nii.gz")
    for r in runs:
        assert (r.subject, r.session, r.task, r.acquisition) == ("1", None, "objectviewing", "25mm")
        assert r.tr == 2.5 and r.n_scans == 121
        assert r.preprocessed is False and r.space is None and r.confounds is None
        assert Path(r.mask) == mask
        assert Path(r.bold) == (DEMO_DATASET / "sub-1" / "func" /
                                f"sub-1_task-objectviewing_acq-25mm_run-{r.run:02d}_bold.nii.gz")
        assert Path(r.events) == Path(r.bold.replace("_bold.nii.gz", "_events.tsv"))


# --------------------------------------------------------------------------- stimulus files

def test_stimulus_files_found_by_name_are_in_the_fingerprint(root):
    """Bare stim_file names of images in a subfolder (as BOLD5000's) are found by file name,
    and a change of one of those files changes the fingerprint of the runs that show it."""
    from bids_vlm.inputs.bids import _stimulus_files

    stim = root / "stimuli"
    (stim / "ImageNet").mkdir()
    for image in stim.glob("*.png"):
        image.rename(stim / "ImageNet" / image.name)
    events = _raw(root, "01", 1, "events.tsv")
    files = _stimulus_files(events, root)
    names = set(pd.read_csv(events, sep="\t")["stim_file"])
    assert files == sorted(str(stim / "ImageNet" / n) for n in names)
    before = {r.label: r.fingerprint for r in _collect(root)}
    image = stim / "ImageNet" / sorted(names)[0]
    mtime = os.stat(image).st_mtime_ns + 5_000_000_000
    os.utime(image, ns=(mtime, mtime))
    after = {r.label: r.fingerprint for r in _collect(root)}
    showing = {r.label for r in _collect(root)
               if image.name in set(pd.read_csv(r.events, sep="\t")["stim_file"])}
    assert "sub-01_task-view_run-1" in showing
    assert {k for k in before if before[k] != after[k]} == showing


def test_stimuli_dir_and_column_options_change_the_fingerprint(root, tmp_path):
    from bids_vlm.inputs.bids import with_stimulus_files
    from bids_vlm.config import StimulusConfig

    runs = _collect(root)
    other = tmp_path / "other_stimuli"
    shutil.copytree(root / "stimuli", other)
    base = [r.fingerprint for r in with_stimulus_files(runs, root, StimulusConfig())]
    assert base == [r.fingerprint for r in with_stimulus_files(runs, root, StimulusConfig())]
    moved = with_stimulus_files(runs, root, StimulusConfig(stimuli_dir=str(other)))
    column = with_stimulus_files(runs, root, StimulusConfig(stim_columns=("caption",)))
    for changed in (moved, column):
        assert all(a != b.fingerprint for a, b in zip(base, changed))
        assert [r.label for r in changed] == [r.label for r in runs]
