"""The association's two backends, one per kind of device, behind one interface (as himalaya's
``get_backend``): what differs between the CPU and a CUDA device is said here, once, and the
association (:mod:`bids_vlm.stats.association`, :mod:`bids_vlm.stats.blockscan`,
:mod:`bids_vlm.stats.layers`) asks :func:`get_backend` instead of testing the device.

- ``cpu``: compiled kernels (numba, :mod:`bids_vlm.stats.kernels`) over tiles of 2,048 voxels
  that stay in cache; as many blocks scanned at once as torch has threads, each on one thread.
- ``cuda``: torch operations over tiles of 65,536 voxels; one block at a time (the device is
  parallel within it).

Both give the same discoveries and the same z to float32 rounding
(``tests/backends/test_devices.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Backend:
    """How the association runs on one kind of device.

    name: "cpu" or "cuda"; tile: voxels per tile of a block's scan; prep_chunk: voxels
    normalised (and their autocorrelations computed) at a time; compiled: the compiled CPU
    kernels (a tile's statistics in one pass, the rows prepared in one pass) rather than torch
    operations.
    """

    name: str
    tile: int
    prep_chunk: int
    compiled: bool

    def workers(self) -> int:
        """Blocks scanned at once: torch's thread count on the CPU, 1 on a GPU."""
        return max(1, torch.get_num_threads()) if self.name == "cpu" else 1


BACKENDS = {"cpu": Backend("cpu", tile=2048, prep_chunk=256, compiled=True),
            "cuda": Backend("cuda", tile=65536, prep_chunk=8192, compiled=False)}


def get_backend(device) -> Backend:
    """The :class:`Backend` of ``device`` (a torch.device or its name, e.g. "cuda:1")."""
    kind = torch.device(device).type
    if kind not in BACKENDS:
        raise ValueError(f"no association backend for device {device!r}; expected cpu or cuda")
    return BACKENDS[kind]
