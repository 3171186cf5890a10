"""Per-participant locks (bids_vlm.locks): a live holder makes a second run exit 75 naming it, a
killed holder's lock is taken over, and the exclusive-file fallback (no flock) does the same by
checking the holder's pid on this host."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_vlm import locks
from bids_vlm.errors import EXIT_TEMPFAIL, BusyError
from conftest import HOLDER



def _holder(*paths) -> subprocess.Popen:
    """A child process that takes the locks ``paths`` and holds them until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(params=["flock", "excl"])
def mode(request, monkeypatch):
    """Both mechanisms: flock, and the exclusive file used where flock is refused (NFS)."""
    if request.param == "excl":
        def refuse(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")
        monkeypatch.setattr(locks.fcntl, "flock", refuse)
    return request.param


def test_second_acquire_is_busy_and_names_the_holder(tmp_path, mode):
    path = tmp_path / "out" / "logs" / ".sub-01.lock"
    lock = locks.acquire(path, "sub-01")
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(BusyError) as exc:
        locks.acquire(path, "sub-01")
    assert exc.value.exit_code == EXIT_TEMPFAIL == 75
    message = str(exc.value)
    assert message.startswith(f"sub-01 is being analysed by process {os.getpid()} on host "
                              f"{socket.gethostname()} since {time.strftime('%H:')}")
    assert message.endswith(f"(lock file {path}); wait for it to finish or stop it")
    other = locks.acquire(tmp_path / "out" / "logs" / ".sub-02.lock", "sub-02")  # others: free
    other.release()
    lock.release()
    assert not (tmp_path / "out").exists()  # the lock file and the folders made for it
    locks.acquire(path, "sub-01").release()


def test_live_holder_process_makes_busy_then_killed_holder_is_taken_over(tmp_path, mode,
                                                                           caplog):
    path = tmp_path / "logs" / ".sub-01.lock"
    holder = _holder(path)
    try:
        with pytest.raises(BusyError, match=f"by process {holder.pid} on host "):
            locks.acquire(path, "sub-01")
    finally:
        _kill9(holder)
    assert json.loads(path.read_text())["pid"] == holder.pid  # left behind: stale
    with caplog.at_level("INFO", logger="bids_vlm"):
        lock = locks.acquire(path, "sub-01")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"process {holder.pid} on host {socket.gethostname()}, which no longer runs" \
        in caplog.text
    lock.release()
    assert not path.exists()


def test_exclusive_file_of_another_host_or_unwritten_is_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)  # no flock at all (as on Windows)
    path = tmp_path / ".group.lock"
    path.write_text(json.dumps({"pid": 1234, "host": "elsewhere", "started": time.time()}))
    with pytest.raises(BusyError) as exc:
        locks.acquire(path, "group")
    assert str(exc.value).startswith("the group level is being run by process 1234 on host "
                                     "elsewhere since ")
    assert str(exc.value).endswith("; if it no longer runs, delete the lock file")
    path.write_text("")  # its writer is between creating and writing it
    with pytest.raises(BusyError, match="by another process"):
        locks.acquire(path, "group")
    old = time.time() - locks.EMPTY_STALE_S - 5  # ... or was killed there long ago
    os.utime(path, (old, old))
    locks.acquire(path, "group").release()
    assert not path.exists()


def test_exclusive_release_keeps_a_lock_taken_over_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    path = tmp_path / ".sub-01.lock"
    lock = locks.acquire(path, "sub-01")
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "theirs"}))
    lock.release()
    assert path.exists()  # not ours any more: left to its holder


CONTENDER = """
import os, sys, time
from bids_vlm import locks
from bids_vlm.errors import BusyError
path, inside, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "excl":
    locks.fcntl = None
got = 0
while got < n:
    try:
        lock = locks.acquire(path, "sub-01")
    except BusyError:
        continue
    fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another is inside
    os.close(fd)
    os.unlink(inside)
    lock.release()
    got += 1
print("ok", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode_", ["flock", "excl"])
def test_processes_racing_for_one_lock_never_hold_it_together(tmp_path, mode_):
    """Acquire and release in a loop in 4 processes: the lock file is removed and created again
    all the time, and no two processes are ever inside at once."""
    path, inside = tmp_path / "logs" / ".sub-01.lock", tmp_path / "inside"
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(path), str(inside), "300",
                               mode_], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip() == "ok", err
    assert not path.exists() and not inside.exists()


def test_process_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert locks.process_alive(os.getpid()) and not locks.process_alive(proc.pid)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and Path(f"/proc/{zombie.pid}").exists() and \
            Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.02)
    try:
        assert not locks.process_alive(zombie.pid)  # exited, not yet reaped
    finally:
        zombie.wait()


FORKER = """
import os, sys, time
from bids_vlm import locks
lock = locks.acquire(sys.argv[1], "sub-01")
if os.fork() == 0:  # a worker forked with the lock's descriptor (as MultiProc's are)
    time.sleep(600)
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_still_held_by_workers_of_a_killed_run_says_so(tmp_path):
    path = tmp_path / ".sub-01.lock"
    proc = subprocess.Popen([sys.executable, "-c", FORKER, str(path)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        proc.send_signal(signal.SIGKILL)  # the run, not its worker
        proc.wait()
        with pytest.raises(BusyError) as exc:
            locks.acquire(path, "sub-01")
        assert str(exc.value).startswith(f"sub-01 is being analysed by the worker processes of "
                                         f"process {proc.pid} on host ")
        assert str(exc.value).endswith("which no longer runs (lock file "
                                       f"{path}); wait for them to finish or stop them")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while True:  # the worker is gone (reaped by init): the lock is free
        try:
            locks.acquire(path, "sub-01").release()
            break
        except BusyError:
            assert time.time() < deadline
            time.sleep(0.05)
