"""Freed memory handed back to the system when a stage ends.

A stage's worker threads allocate and free many arrays of a few MiB; glibc's malloc keeps the
freed space in its arenas for the next allocation rather than returning it, so the resident
memory of a process stays at what its largest stage touched. With Nipype's Linear plugin (the
default, ``--nprocs 1``) every stage runs in the ``bids_vlm`` process, one after the other, so
that space would be counted again under the next stage's own arrays. ``malloc_trim(0)`` returns
the free pages of every arena (on the 10-minute scale case's association: 1.14 GB resident
after it, 0.81 GB once trimmed). Elsewhere (musl, macOS) there is nothing to call and nothing
happens.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim(0)``); True when
    some memory was released, False when none was or the C library has no such call."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))


@contextlib.contextmanager
def released():
    """Run the block, then :func:`release_free_memory` (also when it raises)."""
    try:
        yield
    finally:
        release_free_memory()
