"""Every error class and its exit code in one place (bids_vlm/errors.py), and the way an error
raised inside a Nipype node comes back from its crash file with its class and code."""
from __future__ import annotations

import pytest

from bids_vlm import errors
from bids_vlm.runner import _node_error

CODES = {"BidsVlmError": 1, "DataError": 64, "UnsafeCheckpointError": 64, "NoInputError": 65,
         "WeightsNotFoundError": 66, "ContentNotPresentError": 66, "ResourceError": 69,
         "OutputError": 73, "BusyError": 75}


def test_every_error_class_has_its_documented_code():
    found = {cls.__name__: cls.exit_code for cls in errors._subclasses(errors.BidsVlmError)}
    assert found == CODES
    assert errors.error_class("NotAnError") is errors.BidsVlmError


@pytest.mark.parametrize("name", sorted(CODES))
def test_error_in_a_node_keeps_its_class_through_the_crash_file(tmp_path, name):
    """As Nipype writes it: the traceback ends with the qualified class and the message."""
    module = "bids_vlm.errors"
    (tmp_path / "crash-20261206-000000-root-extract_x-1.txt").write_text(
        "Node: extract_x\n\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
        f"{module}.{name}: /data/models/x.ckpt: the problem\n")
    err = _node_error(tmp_path)
    assert type(err).__name__ == name and err.exit_code == CODES[name]
    assert str(err).startswith("/data/models/x.ckpt: the problem (details: ")


def test_unknown_error_in_a_node_exits_1_with_its_last_line(tmp_path):
    (tmp_path / "crash-20261206-000000-root-x-1.txt").write_text(
        "Traceback (most recent call last):\nValueError: boom\n")
    err = _node_error(tmp_path)
    assert type(err) is errors.BidsVlmError and err.exit_code == 1
    assert str(err).startswith("a pipeline step failed: ValueError: boom")


def test_only_this_runs_crash_files_are_read(tmp_path):
    """Two runs into one output: the error is taken from a crash file written since this run
    started by one of its own nodes, not from the other run's newer one."""
    import os
    import time

    old = tmp_path / "crash-1-root-extract_sub_01_x-1.txt"
    old.write_text("bids_vlm.errors.OutputError: /old: stale\n")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    since = time.time()
    (tmp_path / "crash-2-root-extract_sub_01_x-2.txt").write_text(
        "bids_vlm.errors.DataError: /data/a.png: ours\n")
    (tmp_path / "crash-3-root-extract_sub_02_x-3.txt").write_text(
        "bids_vlm.errors.NoInputError: /data: theirs\n")
    err = _node_error(tmp_path, since, ["bids_vlm_participant.extract_sub_01_x"])
    assert type(err) is errors.DataError and str(err).startswith("/data/a.png: ours")
