"""Atomic writes: every output is written under a temporary name in its final folder and
renamed into place, so that an interrupted run never leaves a half-written file; a failed
write (disk full, quota, read-only file system) is an :class:`~bids_vlm.errors.OutputError`
(exit 73) naming the file. The writers of :mod:`bids_vlm.derivatives.io` and
:mod:`bids_vlm.cifti` build on :func:`atomic_path`."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from bids_vlm.errors import OutputError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    An OSError in the block (e.g. no space left on device) becomes an :class:`OutputError`
    naming ``path``; the temporary file is removed, ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write here: {exc}", path.parent) from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; outputs are shared files
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, read-only file system: nothing is left behind
        raise OutputError(f"cannot write the file: {exc.strerror or exc}", path) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
