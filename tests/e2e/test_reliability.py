"""Reliability: the input dataset is never written, a run killed with SIGKILL resumes to the
same outputs, finished participants are skipped unless --force, participants run in parallel
into one output folder do not interfere, a second run of the same participant exits 75 naming
the first, and a killed run's lock and temporaries are taken over and removed."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import bids_vlm_command, run_cli
from conftest import HOLDER

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


def _lock_holder(path: Path):
    """The pid in the lock file ``path`` (None while it is missing or not written yet)."""
    try:
        return json.loads(path.read_text()).get("pid")
    except (OSError, ValueError):
        return None


def test_same_participant_twice_at_once_second_exits_75(planted, tmp_path):
    """Two runs of sub-01 into one output and its default work directory: the second, started
    while the first holds the participant's lock (stopped there with SIGSTOP, so that the two
    overlap whatever the speed of the machine), exits 75 naming the first, without a traceback;
    the first then finishes with complete outputs."""
    from bids_vlm.finished import marker_path
    from bids_vlm.runner import default_work_dir

    out = tmp_path / "out"
    work = default_work_dir(out)
    args = [str(planted.root), str(out), "participant", "--participant-label", "01", *ARGS]
    lock = out / "logs" / ".sub-01.lock"
    try:
        first = subprocess.Popen([bids_vlm_command(), *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and \
                _lock_holder(lock) != first.pid:
            time.sleep(0.02)
        assert _lock_holder(lock) == first.pid, first.communicate()
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            second = run_cli(*args, check=False)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert second.returncode == 75, second.stderr
        assert (f"bids_vlm: error: sub-01 is being analysed by process {first.pid} on host "
                f"{socket.gethostname()} since ") in second.stderr
        assert f"(lock file {lock}); wait for it to finish or stop it" in second.stderr
        assert "Traceback" not in second.stderr
        stdout, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr
        assert (out / NEURONS.format(s="01")).is_file() and (out / "sub-01.html").is_file()
        outputs = json.loads(marker_path(out, "01").read_text())["outputs"]
        assert NEURONS.format(s="01") in outputs and "sub-01.html" in outputs
        assert not lock.exists() and not (work / ".sub-01.lock").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _holder(*paths) -> subprocess.Popen:
    """A process that takes the locks ``paths`` for sub-01 (as a run does) until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_killed_run_lock_and_temporaries_are_taken_over(planted, tmp_path):
    """A run holding sub-01's locks makes another exit 75 (also one into another output folder
    that shares the work directory); killed with SIGKILL, its locks are stale: the rerun takes
    them over, removes the temporaries that a kill during writes leaves, and lists none of them
    in the completion marker. The group level has its lock too."""
    from bids_vlm.finished import marker_path

    out, work = tmp_path / "out", tmp_path / "work"
    out_lock, work_lock = out / "logs" / ".sub-01.lock", work / ".sub-01.lock"
    args = [planted.root, out, "participant", "--participant-label", "01", "--layers", "2",
            "--no-encoding", "-w", work]  # not quiet: the log says what is taken over
    holder = _holder(out_lock, work_lock)
    try:
        busy = run_cli(*args, check=False)
        other_out = run_cli(planted.root, tmp_path / "out2", *args[2:], check=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert busy.returncode == 75 and "Traceback" not in busy.stderr
    assert f"sub-01 is being analysed by process {holder.pid} on host " in busy.stderr
    assert not (out / "dataset_description.json").exists()  # nothing written
    assert other_out.returncode == 75 and "Traceback" not in other_out.stderr
    assert f"process {holder.pid} on host " in other_out.stderr
    assert f"(lock file {work_lock})" in other_out.stderr
    assert not (tmp_path / "out2").exists()  # not even the folder made for its lock
    assert _lock_holder(out_lock) == _lock_holder(work_lock) == holder.pid  # left: stale
    func = out / "sub-01" / "func"
    orphans = [func / f".{Path(NEURONS.format(s='01')).name}.k2j3h4.tmp",
               func / ".sub-01_desc-x_statmap.nii.gz.a1b2c3.tmp.nii.gz",
               out / "sub-01" / "figures" / ".sub-01_layers.png.q9w8e7.tmp.png",
               out / ".sub-01.html.zz11yy.tmp"]
    for path in orphans:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
    rerun = run_cli(*args)
    assert f"took over the lock of process {holder.pid} on host" in rerun.stderr
    assert "sub-01: removed 4 temporary file(s) left by an interrupted run" in rerun.stderr
    assert not any(p.exists() for p in orphans) and not list(out.rglob(".*.tmp*"))
    assert not out_lock.exists() and not work_lock.exists()
    outputs = json.loads(marker_path(out, "01").read_text())["outputs"]
    assert NEURONS.format(s="01") in outputs and "sub-01.html" in outputs
    assert not [rel for rel in outputs if "/." in f"/{rel}" or ".tmp" in rel]
    assert all((out / rel).stat().st_size == size for rel, size in outputs.items())
    group_lock = out / "logs" / ".group.lock"
    holder = _holder(group_lock)
    try:
        group = run_cli(planted.root, out, "group", "-q", "-w", work, check=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert group.returncode == 75 and "Traceback" not in group.stderr
    assert f"the group level is being run by process {holder.pid} on host " in group.stderr
    assert not (out / "group.html").exists()
