"""Completion markers of finished participants (bids_vlm.finished)."""
from __future__ import annotations

import dataclasses
import json

from bids_vlm.bids import RunSpec
from bids_vlm.config import AnalysisConfig, StatsConfig, to_json
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
