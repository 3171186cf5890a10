"""Reliability: the input dataset is never written, a run killed with SIGKILL resumes to the
same outputs, finished participants are skipped unless --force, and participants run in
parallel into one output folder do not interfere."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import bids_vlm_command, run_cli

pytestmark = pytest.mark.slow
ARGS = ["--layers", "2", "--no-encoding", "-q"]
NEURONS = "sub-{s}/func/sub-{s}_task-view_space-MNI152NLin2009cAsym_desc-tinyclip_neurons.tsv"


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_input_dataset_is_never_written(planted, tmp_path):
    before = _tree_digest(planted.root)
    run_cli(planted.root, tmp_path / "out", "participant", "--participant-label", "01", *ARGS,
            "-w", tmp_path / "work")
    assert _tree_digest(planted.root) == before
    assert not list(planted.root.rglob("*.db")) and not list(planted.root.rglob(".*.tmp*"))


def test_sigkill_during_association_then_resume(planted, tmp_path):
    reference = tmp_path / "reference"
    run_cli(planted.root, reference, "participant", "--participant-label", "01", *ARGS,
            "-w", tmp_path / "work_ref")
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.Popen([bids_vlm_command(), str(planted.root), str(out), "participant",
                             "--participant-label", "01", *ARGS, "-w", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.rglob("associate_*/_node.pklz")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of the association node
    proc.wait()
    assert not (out / NEURONS.format(s="01")).exists()  # it had not finished
    finished = {p.parent.name for p in work.rglob("result_*.pklz")}
    assert any(n.startswith("extract_") for n in finished)
    resumed = run_cli(planted.root, out, "participant", "--participant-label", "01", *ARGS,
                      "-w", work)
    assert resumed.returncode == 0
    assert (out / NEURONS.format(s="01")).read_bytes() == \
        (reference / NEURONS.format(s="01")).read_bytes()
    h5 = next((out / "sub-01" / "func").glob("*_association.h5"))
    assert h5.stat().st_size > 0 and not list(out.rglob(".*.tmp*"))


def test_participants_in_parallel_into_one_output(planted, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen([bids_vlm_command(), str(planted.root), str(out), "participant",
                               "--participant-label", sub, *ARGS, "-w", str(tmp_path / sub)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for sub in ("01", "02")]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    sequential = tmp_path / "seq"
    run_cli(planted.root, sequential, "participant", *ARGS, "-w", tmp_path / "seq_work")
    for sub in ("01", "02"):
        assert (out / NEURONS.format(s=sub)).read_bytes() == \
            (sequential / NEURONS.format(s=sub)).read_bytes()
    assert (out / "dataset_description.json").read_text() == \
        (sequential / "dataset_description.json").read_text().replace(str(sequential), str(out))


def test_read_only_input_dataset(planted, tmp_path):
    """The analysis runs on a dataset mounted read-only (as in a container with :ro)."""
    copy, ro = tmp_path / "copy", tmp_path / "ro"
    shutil.copytree(planted.root, copy)
    ro.mkdir()
    mount = subprocess.run(["mount", "--bind", str(copy), str(ro)], capture_output=True,
                           text=True)
    if mount.returncode:
        pytest.skip(f"cannot bind-mount here (needs root): {mount.stderr.strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)],
                                 capture_output=True, text=True)
        if remount.returncode:
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")
        run_cli(ro, tmp_path / "out", "participant", "--participant-label", "01", *ARGS,
                "-w", tmp_path / "work")
        assert (tmp_path / "out" / NEURONS.format(s="01")).is_file()
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def _mtimes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.is_file()}


def test_finished_participants_are_skipped_unless_force(planted, tmp_path):
    out = tmp_path / "out"
    args = [planted.root, out, "participant", "--layers", "2", "--no-encoding",
            "-w", tmp_path / "work"]  # not quiet: the log says what is skipped
    skipped = "sub-01: finished earlier with the same inputs and options"
    first = run_cli(*args, "--participant-label", "01")
    assert skipped not in first.stderr
    assert (out / "logs" / "sub-01_finished.json").is_file()
    before = _mtimes(out)
    again = run_cli(*args, "--participant-label", "01")
    assert skipped in again.stderr and "--force analyses it again" in again.stderr
    assert f"Report: {out / 'sub-01.html'}" in again.stdout
    assert _mtimes(out) == before  # nothing written at all, not even a log
    both = run_cli(*args)  # sub-01 is skipped, sub-02 analysed
    assert skipped in both.stderr and "sub-02: finished earlier" not in both.stderr
    assert {k: v for k, v in _mtimes(out).items() if k.startswith("sub-01")} == \
        {k: v for k, v in before.items() if k.startswith("sub-01")}
    assert (out / NEURONS.format(s="02")).is_file()
    neurons = out / NEURONS.format(s="01")
    content = neurons.read_bytes()
    forced = run_cli(*args, "--participant-label", "01", "--force")
    assert skipped not in forced.stderr
    assert neurons.stat().st_mtime_ns > before[NEURONS.format(s="01")]
    assert neurons.read_bytes() == content  # same results, written again
    changed = run_cli(*args, "--participant-label", "01", "--fdr-q", "0.01")
    assert skipped not in changed.stderr  # another fingerprint: analysed again
    (out / NEURONS.format(s="01")).unlink()
    missing = run_cli(*args, "--participant-label", "01", "--fdr-q", "0.01")
    assert skipped not in missing.stderr and (out / NEURONS.format(s="01")).is_file()
