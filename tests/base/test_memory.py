"""Freed memory handed back to the system when a stage ends (glibc's malloc_trim)."""
from __future__ import annotations

import ctypes.util
import os
import platform

import pytest

from bids_vlm.memory import release_free_memory, released


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(platform.system() != "Linux" or "musl" in (ctypes.util.find_library("c") or
                                                               ""), reason="glibc's malloc only")
def test_freed_heap_memory_is_returned_after_a_stage():
    """256 MiB of 4 KiB blocks freed but the last (which pins the heap's top, so free() alone
    returns nothing): the block ends with them handed back to the system."""
    blocks = [bytearray(4096) for _ in range(65536)]
    for b in blocks:
        b[0] = 1  # touched: resident
    keep = blocks[-1]
    del blocks
    before = _resident()
    with released():
        pass
    assert before - _resident() > 128 * 2**20, "the freed blocks are still resident"
    assert keep[0] == 1
    assert release_free_memory() in (True, False)  # nothing left to release is not an error
