"""What each run's timeline shows (bids_vlm/inputs/timeline_summary.py), and a participant is never
lost to one analysis unit without stimuli: that unit is skipped with a warning, the others'
outputs are written, the report and the sidecars say so."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from bids_vlm.inputs.stimuli import Timeline
from bids_vlm.inputs.timeline_summary import describe, log_summary, summarise
from bids_vlm.inputs.video import frame_item
from conftest import run_cli
from datagen import make_planted_dataset


def _timeline(images, texts, dt=1.0):
    return Timeline(times=np.arange(len(images)) * dt, dt=dt, images=tuple(images),
                    texts=tuple(texts))


def test_counts_of_a_mixed_run():
    images = ["/s/a.png", "/s/a.png", None, frame_item("/s/film.mp4", 10.5),
              frame_item("/s/film.mp4", 11.5), None, "/s/b.png"]
    texts = [None, "dog", "cat", None, "dog", None, None]
    s = summarise(_timeline(images, texts))
    assert (s["samples"], s["image"], s["video_frame"], s["text"], s["blank"]) == (7, 3, 2, 3, 1)
    assert (s["distinct_images"], s["distinct_videos"], s["distinct_texts"]) == (2, 1, 2)
    assert s["video_time"] == {"film.mp4": [10.5, 11.5, 2.0]}
    assert "7 samples: 3 image, 2 video frame, 3 text, 1 blank" in describe(s)
    assert "film.mp4 10.5-11.5 s" in describe(s)


def test_warnings_all_blank_and_a_replayed_video(caplog):
    with caplog.at_level(logging.WARNING, logger="bids_vlm"):
        log_summary("run-1", "events.tsv", summarise(_timeline([None] * 5, [None] * 5)))
        # a frame-by-frame log without media times: 100 s on screen, 0.5 s of film shown
        frames = [frame_item("/s/film.mp4", (i % 2) * 0.25) for i in range(400)]
        log_summary("run-2", "events.tsv", summarise(_timeline(frames, [None] * 400, 0.25)))
        log_summary("run-3", "events.tsv", summarise(_timeline(
            [frame_item("/s/film.mp4", i * 0.25) for i in range(400)], [None] * 400, 0.25)))
    assert "every sample of the run is blank" in caplog.text
    assert caplog.text.count("cover") == 1 and "cover 0.50 s of the video" in caplog.text


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """The planted dataset's task 'view', and a task 'coco' whose events name their images in
    a column nobody detects (only the trial type and an id)."""
    data = make_planted_dataset(tmp_path_factory.mktemp("units") / "bids", n_subjects=1,
                                n_runs=2, n_scans=60)
    root = data.root
    for path in sorted(root.rglob("*task-view*")):
        target = path.with_name(path.name.replace("task-view", "task-coco"))
        if path.name.endswith("_events.tsv"):
            events = pd.read_csv(path, sep="\t")
            events[["onset", "duration"]].assign(trial_type="coco", image_id=7).to_csv(
                target, sep="\t", index=False)
        else:
            shutil.copy(path, target)
    (root / "task-coco_bold.json").write_text(json.dumps({"RepetitionTime": 2.0,
                                                          "TaskName": "coco"}))
    return root


@pytest.mark.slow
def test_a_unit_without_stimuli_is_skipped_and_the_others_written(two_tasks, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(two_tasks, out, "participant", "--layers", "2", "--streams", "image",
                   "--no-encoding", "-w", tmp_path / "work")
    assert "sub-01_task-coco: analysis unit skipped: no stimulus of the selected stream(s) " \
        "(image) (event columns: onset, duration, trial_type, image_id" in proc.stderr
    func = out / "sub-01" / "func"
    assert list(func.glob("sub-01_task-view_*_neurons.tsv"))
    assert not list(func.glob("sub-01_task-coco_*"))
    report = (out / "sub-01.html").read_text()
    assert "Analysis units skipped" in report and "sub-01_task-coco" in report
    side = json.loads(next(func.glob("sub-01_task-view_*_neurons.json")).read_text())
    timeline = side["StimulusTimeline"]
    assert sorted(timeline) == ["sub-01_task-view_run-1", "sub-01_task-view_run-2"]
    for run, s in timeline.items():
        events = pd.read_csv(two_tasks / "sub-01" / "func" / f"{run}_events.tsv", sep="\t")
        assert s["samples"] == 120  # 60 volumes of 2 s at 1 Hz
        assert s["distinct_images"] == events.stim_file.nunique()
        shown = int(round(events.duration.sum()))  # 1-s samples covered by the images
        assert s["image"] == shown and s["blank"] <= 120 - shown
    assert "Stimulus timeline" in report
