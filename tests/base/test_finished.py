"""Completion markers of finished participants (bids_vlm.finished)."""
from __future__ import annotations

import dataclasses
import json
import os
import time

from bids_vlm.inputs.bids import RunSpec
from bids_vlm.config import AnalysisConfig, StatsConfig, to_json
from bids_vlm.derivatives.io import (
    SHARED_TEMPORARY_AGE_S,
    is_temporary,
    remove_stale_temporaries,
)
from bids_vlm.finished import (
    is_finished,
    mark_finished,
    marker_path,
    participant_fingerprint,
)

RUNS = [RunSpec("01", None, "view", r, None, f"/d/sub-01_run-{r}_bold.nii.gz",
                f"/d/sub-01_run-{r}_events.tsv", 2.0, 100, fingerprint=f"fp{r}") for r in (1, 2)]


def _outputs(out):
    func = out / "sub-01" / "func"
    func.mkdir(parents=True)
    (func / "sub-01_neurons.tsv").write_text("an_id\tbn_count\n")
    (out / "sub-01.html").write_text("<html></html>")


def test_fingerprint_changes_with_options_and_inputs_not_with_run_order():
    cfg = to_json(AnalysisConfig())
    base = participant_fingerprint(cfg, RUNS)
    assert participant_fingerprint(cfg, RUNS[::-1]) == base
    other = to_json(AnalysisConfig(stats=StatsConfig(fdr_q=0.01)))
    assert participant_fingerprint(other, RUNS) != base
    edited = [RUNS[0], dataclasses.replace(RUNS[1], fingerprint="changed")]
    assert participant_fingerprint(cfg, edited) != base
    assert participant_fingerprint(cfg, RUNS[:1]) != base  # another run selection


def test_execution_settings_are_not_in_the_fingerprint():
    """--device, --batch-size, --block-size and --mem say how the run executes: they live in
    Execution, not in the configuration the fingerprint hashes; a result setting does."""
    from bids_vlm.config import Execution, ModelConfig

    base = participant_fingerprint(to_json(AnalysisConfig()), RUNS)
    names = {f.name for section in (ModelConfig, StatsConfig) for f in dataclasses.fields(section)}
    assert not names & {"device", "batch_size", "block_size", "mem_gb"}
    assert {"device", "batch_size", "block_size", "mem_gb"} <= set(Execution.__dataclass_fields__)
    science = AnalysisConfig(model=ModelConfig(pooling="max"))
    assert participant_fingerprint(to_json(science), RUNS) != base


def test_marker_records_outputs_and_fingerprint(tmp_path):
    _outputs(tmp_path)
    assert not is_finished(tmp_path, "01", "abc")  # no marker yet
    path = mark_finished(tmp_path, "01", "abc")
    assert path == marker_path(tmp_path, "01") == tmp_path / "logs" / "sub-01_finished.json"
    data = json.loads(path.read_text())
    assert data["outputs"] == {"sub-01.html": 13, "sub-01/func/sub-01_neurons.tsv": 15}
    assert is_finished(tmp_path, "01", "abc")
    assert not is_finished(tmp_path, "01", "other")  # other options or inputs
    assert not is_finished(tmp_path, "02", "abc")


def test_missing_or_changed_output_or_garbled_marker_is_not_finished(tmp_path):
    _outputs(tmp_path)
    mark_finished(tmp_path, "01", "abc")
    (tmp_path / "sub-01.html").write_text("<html>half")  # another size
    assert not is_finished(tmp_path, "01", "abc")
    mark_finished(tmp_path, "01", "abc")
    (tmp_path / "sub-01" / "func" / "sub-01_neurons.tsv").unlink()
    assert not is_finished(tmp_path, "01", "abc")
    marker_path(tmp_path, "01").write_text("{not json")
    assert not is_finished(tmp_path, "01", "abc")
    marker_path(tmp_path, "01").write_text(json.dumps({"fingerprint": "abc", "outputs": {}}))
    assert not is_finished(tmp_path, "01", "abc")  # a marker without outputs proves nothing


def _orphans(out):
    """Temporaries as a run killed during its writes leaves them (names of atomic_path, of the
    staged NIfTI and PNG, and of the group maps)."""
    func, figures = out / "sub-01" / "func", out / "sub-01" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    return [func / ".sub-01_neurons.tsv.k2j3h4.tmp",
            func / ".sub-01_desc-x_statmap.nii.gz.a1b2c3.tmp.nii.gz",
            figures / ".sub-01_layers.png.q9w8e7.tmp.png",
            out / ".sub-01.html.zz11yy.tmp",
            out / "logs" / ".sub-01_finished.json.p0o9i8.tmp"]


def test_marker_never_lists_temporaries_or_hidden_files(tmp_path):
    _outputs(tmp_path)
    (tmp_path / "logs").mkdir()
    for path in _orphans(tmp_path) + [tmp_path / "sub-01" / ".hidden" / "x.tsv"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    data = json.loads(mark_finished(tmp_path, "01", "abc").read_text())
    assert data["outputs"] == {"sub-01.html": 13, "sub-01/func/sub-01_neurons.tsv": 15}


def test_stale_temporaries_of_one_participant_are_removed(tmp_path):
    _outputs(tmp_path)
    (tmp_path / "logs").mkdir()
    mine = _orphans(tmp_path)
    others = [tmp_path / "sub-02" / "func" / ".sub-02_neurons.tsv.abcdef.tmp",  # another's
              tmp_path / ".sub-010.html.abcdef.tmp",
              tmp_path / "logs" / ".sub-010_finished.json.abcdef.tmp",
              tmp_path / ".dataset_description.json.fresh1.tmp",  # a live run may write it now
              tmp_path / "logs" / ".sub-01.lock"]  # a lock, not a temporary
    old_shared = [tmp_path / ".README.md.old111.tmp", tmp_path / "logs" / ".config_x.toml.o.tmp"]
    for path in mine + others + old_shared:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    old = time.time() - SHARED_TEMPORARY_AGE_S - 60
    for path in old_shared:
        os.utime(path, (old, old))
    removed = remove_stale_temporaries(tmp_path, "sub-01")
    assert sorted(removed) == sorted(mine + old_shared)
    assert all(p.exists() for p in others)
    assert (tmp_path / "sub-01" / "func" / "sub-01_neurons.tsv").is_file()  # outputs stay
    assert (tmp_path / "sub-01.html").is_file()
    assert remove_stale_temporaries(tmp_path, "sub-01") == []
    group = tmp_path / "group" / ".group_desc-x_stat-meanr_statmap.tmp.nii.gz"
    group.parent.mkdir()
    group.write_text("half")
    assert remove_stale_temporaries(tmp_path, "group") == [group]


def test_temporary_names():
    assert is_temporary(".sub-01_neurons.tsv.k2j3h4.tmp")
    assert is_temporary(".x_statmap.nii.gz.a1b2c3.tmp.nii.gz")
    assert not is_temporary("sub-01_neurons.tsv") and not is_temporary(".bidsignore")
    assert not is_temporary(".sub-01.lock") and not is_temporary("x.tmp")
