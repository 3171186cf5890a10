"""The association's backends (bids_vlm/stats/backends.py): one per kind of device, found from
any device name; what they give each stage (the agreement of their results is
tests/backends/test_devices.py's)."""
from __future__ import annotations

import pytest
import torch

from bids_vlm.stats import memory_bound
from bids_vlm.stats.backends import BACKENDS, get_backend


def test_each_device_kind_has_its_backend():
    cpu, cuda = get_backend("cpu"), get_backend("cuda:1")
    assert cpu is BACKENDS["cpu"] and get_backend(torch.device("cpu")) is cpu
    assert cuda is BACKENDS["cuda"] and get_backend(torch.device("cuda", 0)) is cuda
    assert cpu.compiled and not cuda.compiled
    assert cpu.tile < cuda.tile and cpu.prep_chunk < cuda.prep_chunk
    assert cpu.workers() == max(1, torch.get_num_threads()) and cuda.workers() == 1
    with pytest.raises(ValueError, match="no association backend for device 'mps'"):
        get_backend("mps")


def test_memory_bound_follows_the_backend():
    """A GPU's larger tiles and chunks cost more per block; its single worker less."""
    args = (1000, 4096, 200000, 64)
    cpu_one = memory_bound(*args, device="cpu", workers=1)
    cuda_one = memory_bound(*args, device="cuda", workers=1)
    assert cuda_one > cpu_one
    assert memory_bound(*args, device="cpu", workers=2) > cpu_one
    assert memory_bound(*args, device="cuda") == cuda_one  # one worker by default
