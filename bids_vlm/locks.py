"""One run at a time per participant: lock files in the output and the work directory.

A participant-level run holds, for every selected participant, ``<output>/logs/.sub-<label>.lock``
(from before it decides whether the participant is finished until its outputs and completion
marker are written) and ``<work>/.sub-<label>.lock`` (while its graph runs); the group level
holds ``.group.lock`` in both. A second run for the same participant into the same output or
work directory stops at once with :class:`~bids_vlm.errors.BusyError` (exit code 75,
EX_TEMPFAIL) naming the process that holds the lock; participants analysed by different
processes do not wait for each other.

The lock is an ``fcntl.flock`` on the file, which the kernel releases when the holding process
ends however it ends (also ``kill -9``), so the lock of a killed run is stale by construction and
the next run takes it over. The file holds the holder's pid, host and start time (JSON) for the
message; it is removed when the lock is released. Where ``flock`` is unavailable (no
:mod:`fcntl`) or the file system refuses it (some NFS or FUSE mounts), the lock is the file
itself, created exclusively (``O_EXCL``); a file left by a process that no longer runs on this
host is stale and taken over (a holder on another host cannot be checked: the message says to
delete the file if that process no longer runs).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from bids_vlm.errors import BusyError, OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOGGER = logging.getLogger("bids_vlm")
LOCK_SUFFIX = ".lock"
EMPTY_STALE_S = 60  # an exclusive lock file still empty after this long: its writer died
_HELD: set = set()  # tokens of the locks this process holds
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL,
                errno.EBADF}


def lock_name(key: str) -> str:
    """``.sub-01.lock`` for ``sub-01``, ``.group.lock`` for ``group`` (hidden, so never an
    output; in the output it lives under ``logs/``, which the .bidsignore lists)."""
    return f".{key}{LOCK_SUFFIX}"


def output_lock_path(output_dir, key: str) -> Path:
    return Path(output_dir) / "logs" / lock_name(key)


def work_lock_path(work_dir, key: str) -> Path:
    return Path(work_dir) / lock_name(key)


def _what(key: str) -> str:
    return "the group level is being run" if key == "group" else f"{key} is being analysed"


class Lock:
    """A held lock file (see the module's docstring); :meth:`release` removes it."""

    def __init__(self, path: Path, key: str, fd: int | None, token: str, mode: str):
        self.path, self.key, self.fd, self.token, self.mode = path, key, fd, token, mode
        self.created_dirs: list[Path] = []  # made for the lock file: removed when left empty

    def release(self):
        if self.mode == "flock":
            # unlink before unlocking: whoever opened the old file and gets it locked now sees
            # that the path no longer names it and starts again on a new file
            with contextlib.suppress(OSError):
                if _same_file(self.path, self.fd):
                    os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.close(self.fd)
        elif self.mode == "excl":
            with contextlib.suppress(OSError):
                if _read_holder(self.path).get("token") == self.token:
                    os.unlink(self.path)
        _HELD.discard(self.token)
        self.mode = "released"
        for folder in self.created_dirs:  # deepest first; a run that failed writes nothing
            try:
                os.rmdir(folder)
            except OSError:
                break

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(path, key: str, folder: str = "directory") -> Lock:
    """Take the lock file ``path`` for ``key`` (``sub-01`` or ``group``) without waiting;
    missing folders above it are created (``folder`` names the topmost one in an error).

    Raises :class:`BusyError` (exit 75) naming the holder when a live process holds it, and
    :class:`OutputError` (exit 73) when the lock file cannot be created.
    """
    path = Path(path)
    created = [d for d in [path.parent, *path.parent.parents] if not d.exists()]
    for _ in range(100):  # each turn lost a race with another process: try again
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # removed by a run releasing its lock while made: again
            continue
        except OSError as exc:
            raise OutputError(f"cannot create the {folder}: {exc}",
                              created[-1] if created else path.parent) from exc
        lock = _try_flock(path, key) if fcntl is not None else _try_excl(path, key)
        if lock is not None:
            lock.created_dirs = created
            return lock
        time.sleep(0.01)
    raise BusyError(f"{_what(key)} by other processes that keep taking the lock "
                    f"(lock file {path}); try again later")


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags, 0o666)
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError as exc:
        raise OutputError(f"cannot create the lock file: {exc.strerror or exc}", path) from exc


def _try_flock(path: Path, key: str) -> Lock | None:
    """The lock by flock (or, where the file system refuses flock, by exclusive creation:
    :func:`_try_excl`); None to try again (lost a race with another process)."""
    try:
        fd, created = _open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL), True
    except FileExistsError:
        try:
            fd, created = _open(path, os.O_RDWR), False
        except FileNotFoundError:  # its holder has just released it
            return None
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyError(_busy_message(key, _read_holder(path, wait=True), path)) from None
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            os.close(fd)
            raise OutputError(f"cannot lock the file: {exc.strerror or exc}", path) from exc
        LOGGER.debug("flock is not supported on %s (%s): an exclusive lock file", path, exc)
        if not created:
            os.close(fd)
            return _try_excl(path, key)
        return _write_record(path, key, fd, "excl")  # created exclusively: it is ours
    if not _same_file(path, fd):  # its holder removed it while releasing: start again
        os.close(fd)
        return None
    previous = _read_holder(path)
    if previous.get("pid"):
        LOGGER.info("%s: took over the lock of process %s on host %s, which no longer runs "
                    "(%s)", key, previous["pid"], previous.get("host", "?"), path)
    return _write_record(path, key, fd, "flock")


def _try_excl(path: Path, key: str) -> Lock | None:
    """The lock as an exclusively created file; None to try again (a stale file removed)."""
    try:
        fd = _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        holder = _read_holder(path)
        if not holder and not path.exists():  # released meanwhile: try again
            return None
        if _is_stale(path, holder):
            if _remove_stale(path, holder):
                LOGGER.info("%s: took over the lock of process %s on host %s, which no longer "
                            "runs (%s)", key, holder.get("pid", "?"), holder.get("host", "?"),
                            path)
            return None
        raise BusyError(_busy_message(key, holder, path, excl=True)) from None
    except FileNotFoundError:
        return None
    return _write_record(path, key, fd, "excl")


def _write_record(path: Path, key: str, fd: int, mode: str) -> Lock:
    """Write the holder's record into the held lock file; in ``excl`` mode the file is closed
    (the file is the lock), in ``flock`` mode it stays open (the descriptor holds the lock)."""
    token = uuid.uuid4().hex
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _holder_text(token))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        raise OutputError(f"cannot write the lock file: {exc.strerror or exc}", path) from exc
    if mode == "excl":
        os.close(fd)
        fd = None
    _HELD.add(token)
    return Lock(path, key, fd, token, mode)


def _remove_stale(path: Path, holder: dict) -> bool:
    """Remove the stale exclusive lock file ``path`` if it still holds ``holder``'s record;
    under a guard file, so that of two runs that found it stale, the later one does not remove
    the lock that the earlier one has taken meanwhile."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another run is taking it over; one killed there long ago ...
        with contextlib.suppress(OSError):
            if time.time() - os.stat(guard).st_mtime > EMPTY_STALE_S:
                os.unlink(guard)
        return False
    except OSError as exc:
        raise OutputError(f"cannot create the lock file: {exc.strerror or exc}", guard) from exc
    try:
        if _read_holder(path) == holder and _is_stale(path, holder):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                return True
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(guard)


def _holder_text(token: str) -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.time(), "token": token,
                       "command": " ".join(sys.argv)}).encode() + b"\n"


def _read_holder(path: Path, wait=False) -> dict:
    """The holder's record ({} when the file is missing, empty or garbled). ``wait``: give a
    holder that has just taken the lock a moment to write it."""
    for attempt in range(20 if wait else 1):
        try:
            data = json.loads(Path(path).read_text())
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass
        if attempt < 19 and wait:
            time.sleep(0.05)
    return {}


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _is_stale(path: Path, holder: dict) -> bool:
    """A lock file whose holder no longer runs on this host (or that stayed empty, its writer
    killed before writing it). A holder on another host is never stale: it cannot be checked."""
    if not holder:
        try:
            return time.time() - os.stat(path).st_mtime > EMPTY_STALE_S
        except OSError:  # gone meanwhile: nothing to take over, the caller tries again
            return False
    if holder.get("host") != socket.gethostname():
        return False
    try:
        pid = int(holder.get("pid"))
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():  # not a lock this process holds: an earlier process with its pid
        return holder.get("token") not in _HELD
    return not process_alive(pid)


def _since(started) -> str:
    try:
        started = float(started)
    except (TypeError, ValueError):
        return ""
    fmt = "%H:%M" if time.strftime("%Y%m%d", time.localtime(started)) == time.strftime(
        "%Y%m%d") else "%Y-%m-%d %H:%M"
    return f" since {time.strftime(fmt, time.localtime(started))}"


def _busy_message(key: str, holder: dict, path: Path, excl=False) -> str:
    host = holder.get("host")
    who = (f"by process {holder['pid']} on host {host or '?'}{_since(holder.get('started'))}"
           if holder.get("pid") else "by another process")
    hint = "wait for it to finish or stop it"
    if excl and host and host != socket.gethostname():  # its liveness cannot be checked from here
        hint += "; if it no longer runs, delete the lock file"
    elif not excl and holder.get("pid") and host == socket.gethostname() and \
            not _alive(holder["pid"]):  # killed alone: its forked workers (MultiProc) hold it
        who = (f"by the worker processes of process {holder['pid']} on host {host}"
               f"{_since(holder.get('started'))}, which no longer runs")
        hint = "wait for them to finish or stop them"
    return f"{_what(key)} {who} (lock file {path}); {hint}"


def _alive(pid) -> bool:
    try:
        return process_alive(int(pid))
    except (TypeError, ValueError):
        return True
