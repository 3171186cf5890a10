"""Finding fMRIPrep outputs as users have them: nested below derivatives/, without a
dataset_description.json, run numbers padded differently from the raw data, fMRIPrep 1.x
names; a --space nobody has is an error naming the spaces found; when the raw BOLD is used
although derivatives exist, the log says which entity did not match; CIFTI time series
(``--space fsLR``), with fMRIPrep <= 20.x's legacy sidecars."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from bids_vlm.inputs import fmriprep
from bids_vlm.inputs.bids import collect_runs, load_layout
from bids_vlm.config import RunFilter
from bids_vlm.errors import EXIT_NO_INPUT, NoInputError
from datagen import SPACE, make_planted_dataset
from conftest import run_cli

N_SCANS = 20


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("fmriprep_template") / "bids",
                                n_subjects=1, n_runs=2, n_scans=N_SCANS)


@pytest.fixture
def root(template, tmp_path) -> Path:
    dest = tmp_path / "bids"
    shutil.copytree(template.root, dest)
    return dest


def _deriv(root) -> Path:
    return root / "derivatives" / "fmriprep"


def _collect(root, **kwargs):
    return collect_runs(load_layout(root), RunFilter(), **kwargs)


def _rename(folder: Path, old: str, new: str):
    for path in sorted(folder.rglob(f"*{old}*")):
        path.rename(path.with_name(path.name.replace(old, new)))


def test_nested_derivative_without_description_is_found(root, caplog):
    nested = root / "derivatives" / "lab" / "v20.2" / "fmriprep"
    nested.parent.mkdir(parents=True)
    shutil.move(_deriv(root), nested)
    (nested / "dataset_description.json").unlink()
    with caplog.at_level(logging.WARNING, logger="bids_vlm"):
        runs = _collect(root)
    assert all(r.preprocessed for r in runs)
    assert all(Path(r.bold).is_relative_to(nested) for r in runs)
    assert all(Path(r.confounds).is_relative_to(nested) and r.mask for r in runs)
    assert "without dataset_description.json" in caplog.text


def test_padded_run_numbers_match(root):
    _rename(_deriv(root), "run-1_", "run-01_")
    _rename(_deriv(root), "run-2_", "run-02_")
    runs = _collect(root)
    assert [r.run for r in runs] == [1, 2]
    assert all(r.preprocessed and "run-0" in Path(r.bold).name for r in runs)
    assert all("run-0" in Path(r.confounds).name for r in runs)


def test_fmriprep_1x_names(root):
    """fMRIPrep 1.0-1.1: _bold_space-X_preproc, _bold_space-X_brainmask, _bold_confounds."""
    func = _deriv(root) / "sub-01" / "func"
    for run in (1, 2):
        stem = f"sub-01_task-view_run-{run}"
        (func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz").rename(
            func / f"{stem}_bold_space-{SPACE}_preproc.nii.gz")
        (func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz").rename(
            func / f"{stem}_bold_space-{SPACE}_brainmask.nii.gz")
        (func / f"{stem}_desc-confounds_timeseries.tsv").rename(
            func / f"{stem}_bold_confounds.tsv")
        for side in func.glob(f"{stem}_space-*.json"):
            side.unlink()
    runs = _collect(root)
    assert all(r.preprocessed and r.space == SPACE for r in runs)
    assert [Path(r.bold).name for r in runs] == [
        f"sub-01_task-view_run-{n}_bold_space-{SPACE}_preproc.nii.gz" for n in (1, 2)]
    assert all(Path(r.mask).name.endswith("_brainmask.nii.gz") for r in runs)
    assert all(Path(r.confounds).name.endswith("_bold_confounds.tsv") for r in runs)


def test_unknown_space_is_an_error_naming_the_spaces_found(root):
    with pytest.raises(NoInputError) as exc:
        _collect(root, space="fsLR")
    assert exc.value.exit_code == EXIT_NO_INPUT
    assert f"spaces found: {SPACE}" in str(exc.value) and "--space fsLR" in str(exc.value)
    _dtseries(root, 1)
    with pytest.raises(NoInputError, match=r"run-2_bold.*--space fsLR: no CIFTI time series of "
                                           r"this run in that space \(CIFTI found: fsLR:den-91k"):
        _collect(root, space="fsLR")
    with pytest.raises(NoInputError, match=r"--space fsLR:den-170k: .*spaces found: "
                                           rf"{SPACE}; .*CIFTI time series .*: fsLR:den-91k"):
        _collect(root, space="fsLR:den-170k")
    assert {r.space for r in _collect(root, space=SPACE)} == {SPACE}
    assert {r.space for r in _collect(root)} == {SPACE}  # CIFTI only when asked for


def _dtseries(root, run, step=2.0, legacy=False, frames=N_SCANS):
    """A small CIFTI time series (60 grayordinates of the 91k) of run ``run``."""
    import nibabel as nib
    import numpy as np
    from nibabel.cifti2 import cifti2_axes as axes

    from bids_vlm import cifti

    bm = cifti.standard_91k()[np.r_[0:40, 91262:91282]]
    img = nib.Cifti2Image(np.random.default_rng(run).standard_normal((frames, len(bm)))
                          .astype(np.float32),
                          header=(axes.SeriesAxis(0.0, step, frames, "SECOND"), bm))
    stem = _deriv(root) / "sub-01" / "func" / f"sub-01_task-view_run-{run}_space-fsLR_den-91k_bold"
    nib.save(img, f"{stem}.dtseries.nii")
    side = ({"space": "HCP grayordinates", "grayordinates": "91k", "surface": "fsLR"}
            if legacy else {"RepetitionTime": 2.0})
    Path(f"{stem}.dtseries.json" if legacy else f"{stem}.json").write_text(json.dumps(side))
    return Path(f"{stem}.dtseries.nii")


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["fsLR", "fsLR:den-91k"])
def test_cifti_time_series_are_the_runs_of_space_fslr(root, spec, caplog):
    paths = [_dtseries(root, 1), _dtseries(root, 2, step=2.5, legacy=True)]
    with caplog.at_level(logging.WARNING):
        runs = _collect(root, space=spec)
    assert [r.bold for r in runs] == [str(p) for p in paths]
    assert {(r.space, r.density, r.mask, r.n_scans, r.tr) for r in runs} == {
        ("fsLR", "91k", None, N_SCANS, 2.0)}  # TR from the raw sidecar
    assert [r.confounds is not None for r in runs] == [True, True]
    # the series step of run-2 disagrees with the sidecar's TR: a warning, the sidecar wins
    assert "RepetitionTime 2 s in the JSON sidecar but 2.5 s in the CIFTI series axis " \
           "step" in caplog.text
    # fMRIPrep <= 20.x's X_bold.dtseries.json is the sidecar of X_bold.dtseries.nii
    assert fmriprep.sidecar_path(paths[1]).endswith("_bold.dtseries.json")
    assert caplog.text.count("fMRIPrep <= 20.x CIFTI sidecar") == 1
    assert "run-2_space-fsLR_den-91k_bold.dtseries.json); its keys" in caplog.text
    assert fmriprep.sidecar(paths[0]) == {"RepetitionTime": 2.0}


@pytest.mark.slow
def test_truncated_cifti_is_a_data_error_naming_it(root):
    from bids_vlm.errors import DataError

    path = _dtseries(root, 1)
    _dtseries(root, 2)
    path.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(DataError, match="CIFTI file is truncated") as exc:
        _collect(root, space="fsLR")
    assert str(path) in str(exc.value)


def test_space_spec_and_density():
    assert fmriprep.split_space("fsLR:den-91k") == ("fsLR", "91k")
    assert fmriprep.split_space("MNI152NLin2009cAsym") == ("MNI152NLin2009cAsym", "")
    assert fmriprep.split_space("") == ("", "")


def test_space_missing_for_one_run_is_an_error(root):
    for path in (_deriv(root) / "sub-01" / "func").glob("sub-01_task-view_run-2_space-*"):
        path.rename(path.with_name(path.name.replace(SPACE, "T1w")))
    with pytest.raises(NoInputError, match=r"run-2_bold.*--space .*no preprocessed BOLD of this "
                       r"run in space MNI152NLin2009cAsym \(it has: T1w\)"):
        _collect(root, space=SPACE)
    runs = _collect(root)  # no --space: each run its preferred space
    assert [r.space for r in runs] == [SPACE, "T1w"]


def test_raw_bold_used_says_which_entity_did_not_match(root, caplog):
    _rename(_deriv(root), "task-view", "task-watch")
    with caplog.at_level(logging.WARNING, logger="bids_vlm"):
        runs = _collect(root)
    assert not any(r.preprocessed for r in runs)
    assert "no preprocessed BOLD found" in caplog.text
    assert "differs in task watch vs view" in caplog.text


def test_raw_bold_without_any_derivative_says_so(root, caplog):
    shutil.rmtree(root / "derivatives")
    with caplog.at_level(logging.WARNING, logger="bids_vlm"):
        assert not any(r.preprocessed for r in _collect(root))
    assert "no derivative dataset found" in caplog.text


def test_dataset_roots_stop_at_subject_folders(tmp_path):
    for folder in ("a/fmriprep/sub-01/func", "b/c/d/sub-02", ".hidden/sub-03",
                   "e/f/g/h/i/sub-04"):
        (tmp_path / folder).mkdir(parents=True)
    roots = fmriprep.dataset_roots(tmp_path)
    assert [r.relative_to(tmp_path).as_posix() for r in roots] == ["a/fmriprep", "b/c/d"]


@pytest.mark.parametrize("a, b, same", [("1", "01", True), ("01", "001", True),
                                        ("2", "12", False), ("a", "a", True), ("1a", "01a", False)])
def test_same_value(a, b, same):
    assert fmriprep.same_value(a, b) is same


@pytest.mark.slow
def test_cli_uses_nested_padded_description_less_derivatives(root, tmp_path):
    """The CLI as a user runs it on such a layout: the BOLD is the preprocessed one."""
    nested = root / "derivatives" / "pipelines" / "fmriprep"
    nested.parent.mkdir(parents=True)
    shutil.move(_deriv(root), nested)
    (nested / "dataset_description.json").unlink()
    _rename(nested, "run-1_", "run-01_")
    out = tmp_path / "out"
    proc = run_cli(root, out, "participant", "--layers", "2", "--no-encoding",
                   "-w", tmp_path / "work")
    assert "no preprocessed BOLD found" not in proc.stderr
    sides = [json.loads(p.read_text()) for p in (out / "sub-01" / "func").glob("*_statmap.json")]
    assert sides and all(s["BOLDInput"].startswith("preprocessed") for s in sides)
    assert all("pipelines/fmriprep/sub-01/func/sub-01_task-view_run-01_space-" in str(s["Sources"])
               for s in sides)
