"""--sessions through the CLI on a dataset of 2 sessions of 1 run each (THINGS has 12 sessions
of 10 runs): pooled (default) is one unit of both runs, with leave-one-run-out encoding and
outputs without a session entity; separate is one unit per session, each too short for the
encoding, which a warning naming the session says."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from datagen import make_planted_dataset


def _into_sessions(root: Path):
    """Run n of every subject becomes run 1 of session n (raw and fMRIPrep files)."""
    for path in sorted(root.rglob("sub-*_run-*")):
        if not path.is_file():
            continue
        name = path.name
        run = name.split("_run-")[1].split("_")[0]
        sub_dir = next(p for p in path.parents if p.name.startswith("sub-"))
        new_dir = sub_dir / f"ses-{run}" / path.parent.relative_to(sub_dir)
        new_dir.mkdir(parents=True, exist_ok=True)
        sub = sub_dir.name
        path.rename(new_dir / name.replace(f"{sub}_", f"{sub}_ses-{run}_", 1)
                    .replace(f"_run-{run}_", "_run-1_"))
    for folder in sorted(root.rglob("func"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


@pytest.fixture(scope="module")
def sessions_dataset(tmp_path_factory):
    data = make_planted_dataset(tmp_path_factory.mktemp("sessions") / "bids", n_subjects=1,
                                n_runs=2, n_scans=60)
    _into_sessions(data.root)
    assert sorted(p.name for p in data.root.rglob("*_bold.nii.gz"))[0] == \
        "sub-01_ses-1_task-view_run-1_bold.nii.gz"
    return data.root


def test_pooled_sessions_are_one_unit_with_encoding(sessions_dataset, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(sessions_dataset, out, "participant", "--layers", "2", "--no-lesion",
                   "-w", tmp_path / "work")
    func = out / "sub-01" / "func"
    assert not (out / "sub-01" / "ses-1").exists()
    assert list(func.glob("sub-01_task-view_space-*_desc-tinyclipImage02_stat-encodingr_"
                          "statmap.nii.gz"))
    assert "layer-wise encoding skipped" not in proc.stderr


def test_separate_sessions_warn_per_session(sessions_dataset, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(sessions_dataset, out, "participant", "--layers", "2", "--no-lesion",
                   "--sessions", "separate", "-w", tmp_path / "work")
    for ses in ("1", "2"):
        func = out / "sub-01" / f"ses-{ses}" / "func"
        assert list(func.glob(f"sub-01_ses-{ses}_task-view_space-*_desc-tinyclipImage02_"
                              "stat-r_*.nii.gz"))
        assert f"sub-01 ses-{ses} task-view: 1 run" in proc.stderr
    assert not list(out.rglob("*stat-encodingr_statmap.nii.gz"))
    shutil.rmtree(out)
