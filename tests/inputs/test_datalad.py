"""DataLad / git-annex inputs whose content was not fetched: exit 66 before any computation,
with the exact `datalad get` to run; a fetched annex link is read; another broken link is bad
data (64)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bids_vlm.inputs.bids import collect_runs, load_layout
from bids_vlm.config import RunFilter
from bids_vlm.inputs.datalad import annex_target, check_present
from bids_vlm.errors import EXIT_DATA, EXIT_WEIGHTS, ContentNotPresentError, DataError
from conftest import run_cli
from datagen import SPACE, make_planted_dataset

KEY = "SHA256E-s123--0123abcd.nii.gz"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("annex_template") / "bids",
                                n_subjects=1, n_runs=2, n_scans=20)


@pytest.fixture
def root(template, tmp_path) -> Path:
    dest = tmp_path / "bids"
    shutil.copytree(template.root, dest)
    return dest


def _preproc(root, run=1) -> Path:
    return (root / "derivatives" / "fmriprep" / "sub-01" / "func" /
            f"sub-01_task-view_run-{run}_space-{SPACE}_desc-preproc_bold.nii.gz")


def _annex(path: Path, fetched: bool):
    """Turn ``path`` into a git-annex link (its content moved into the store, or dropped)."""
    store = path.parents[3] / ".git" / "annex" / "objects" / "Xy" / "Zw" / KEY
    store.mkdir(parents=True, exist_ok=True)
    if fetched:
        shutil.move(path, store / KEY)
    else:
        path.unlink()
    path.symlink_to(os.path.relpath(store / KEY, path.parent))


def test_missing_annex_content_names_the_datalad_get(root):
    bold = _preproc(root)
    _annex(bold, fetched=False)
    assert annex_target(bold) is not None
    with pytest.raises(ContentNotPresentError) as exc:
        collect_runs(load_layout(root), RunFilter())
    assert exc.value.exit_code == EXIT_WEIGHTS
    assert f"datalad get -d {root / 'derivatives' / 'fmriprep'} {bold}" in str(exc.value)


def test_fetched_annex_content_is_read(root):
    _annex(_preproc(root), fetched=True)
    runs = collect_runs(load_layout(root), RunFilter())
    assert runs[0].preprocessed and runs[0].n_scans == 20


def test_other_broken_link_is_bad_data(tmp_path):
    link = tmp_path / "x.nii.gz"
    link.symlink_to(tmp_path / "nowhere.nii.gz")
    with pytest.raises(DataError, match="broken symbolic link") as exc:
        check_present(link)
    assert exc.value.exit_code == EXIT_DATA
    check_present(tmp_path)  # not a link: nothing to say


@pytest.mark.slow
def test_cli_exits_66_before_any_computation(root, tmp_path):
    _annex(_preproc(root, 2), fetched=False)
    out = tmp_path / "out"
    proc = run_cli(root, out, "participant", "-w", tmp_path / "work", check=False)
    assert proc.returncode == EXIT_WEIGHTS
    assert "datalad get -d" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "sub-01").exists() and not (tmp_path / "work").exists()


@pytest.mark.slow
def test_unfetched_stimulus_names_the_datalad_get(root, tmp_path):
    """A stimulus that is a git-annex link whose content was not fetched (OpenNeuro's
    stimuli/ in a DataLad clone): exit 66 with the datalad get, before any computation."""
    (root / ".git" / "annex" / "objects").mkdir(parents=True)
    image = root / "stimuli" / "img03.png"
    image.unlink()
    image.symlink_to(os.path.relpath(root / ".git" / "annex" / "objects" / "Ab" / "Cd" / KEY,
                                     image.parent))
    out = tmp_path / "out"
    proc = run_cli(root, out, "participant", "-w", tmp_path / "work", check=False)
    assert proc.returncode == EXIT_WEIGHTS, proc.stderr
    assert f"datalad get -d {root} {image}" in proc.stderr
    assert not (out / "sub-01").exists()
