"""Miniatures of real OpenNeuro layouts run through the CLI (issue 14: stimulus column,
stimuli folder, media time, audio).

Each miniature has the real events.tsv (and TR sidecar) of its dataset, copied into
``tests/data/openneuro/`` (CC0, see its PROVENANCE.md), synthetic white-noise BOLD of the real
TR and volume count on an 8 x 8 x 8 grid, and synthetic stimuli where the dataset's users have
them: BOLD5000's images in the COCO/, ImageNet/ and Scene/ subfolders of a stimuli folder
outside the dataset (the events name them bare), THINGS' images under ``object_images/<concept>/``
(the events name ``<concept>/<file>`` in ``file_path``). The checks count, per run, the image
samples of the timeline the pipeline used against the samples the events cover.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from datagen import write_colour_video, write_image, write_layout_dataset

from bids_vlm.cli.run import main

DATA = Path(__file__).parents[1] / "data" / "openneuro"
FAST = ["--streams", "image", "--layers", "2", "--no-encoding", "--n-surrogates", "0"]
BOLD5000_RUNS = [f"sub-CSI1_ses-01_task-5000scenes_run-0{r}" for r in (1, 2, 3)]
THINGS_RUNS = ["sub-01_ses-things01_task-things_run-01", "sub-01_ses-things01_task-things_run-02",
               "sub-01_ses-things02_task-things_run-01"]
FOLDERS = {"coco": "COCO", "imagenet": "ImageNet", "scenes": "Scene"}  # BOLD5000's ImgType


def _stem(name):
    """BIDS path of a run stem: sub-X/ses-Y/func/<name>."""
    parts = dict(p.split("-", 1) for p in name.split("_"))
    return f"sub-{parts['sub']}/ses-{parts['ses']}/func/{name}"


@pytest.fixture(scope="module")
def bold5000(tmp_path_factory):
    """BOLD5000 (ds001499), sub-CSI1 ses-01, 3 runs of 194 volumes at TR 2 s (the volume count
    of its fMRIPrep confounds); 111 images in the distribution's subfolders, outside the
    dataset."""
    base = tmp_path_factory.mktemp("bold5000")
    root = write_layout_dataset(base / "ds001499", {
        _stem(r): DATA / "ds001499" / f"{r}_events.tsv" for r in BOLD5000_RUNS},
        tr=2.0, n_scans=194, name="BOLD5000 miniature")
    shutil.copy(DATA / "ds001499" / "task-5000scenes_bold.json", root)
    stim = base / "BOLD5000_Stimuli" / "Scene_Stimuli" / "Presented_Stimuli"
    for i, run in enumerate(BOLD5000_RUNS):
        events = pd.read_csv(DATA / "ds001499" / f"{run}_events.tsv", sep="\t")
        for j, (name, kind) in enumerate(zip(events["stim_file"], events["ImgType"])):
            write_image(stim / FOLDERS[kind.removeprefix("rep_")] / name, seed=100 * i + j)
    return root, base / "BOLD5000_Stimuli"


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    """THINGS-fMRI (ds004192), sub-01, 2 sessions (2 + 1 runs) of 284 volumes at TR 1.5 s
    (the real per-run sidecar, with its SliceTiming); images under object_images/<concept>/
    and the catch images under catch_images/ of a THINGS folder outside the dataset."""
    base = tmp_path_factory.mktemp("things")
    root = write_layout_dataset(base / "ds004192", {
        _stem(r): DATA / "ds004192" / f"{r}_events.tsv" for r in THINGS_RUNS},
        tr=1.5, n_scans=284, name="THINGS-fMRI miniature")
    for run in THINGS_RUNS:
        shutil.copy(DATA / "ds004192" / "sub-01_ses-things01_task-things_run-01_bold.json",
                    root / f"{_stem(run)}_bold.json")
    stim = base / "THINGS"
    for i, run in enumerate(THINGS_RUNS):
        events = pd.read_csv(DATA / "ds004192" / f"{run}_events.tsv", sep="\t")
        for j, value in enumerate(events["file_path"]):
            folder = "catch_images" if value.startswith("catch") else "object_images"
            write_image(stim / folder / value, seed=1000 * i + j)
    return root, stim


def _timelines(work) -> dict:
    """{run label: timeline dict} of every timelines node in the work directory."""
    out = {}
    for path in Path(work).rglob("timelines.json"):
        out.update(json.loads(path.read_text()))
    return out


def _covered(events: pd.DataFrame, n_samples: int, dt: float = 1.0) -> int:
    """Samples of the grid that some event overlaps (those the timeline gives a stimulus)."""
    covered = set()
    for on, dur in zip(events["onset"], events["duration"]):
        first = int(math.floor(on / dt + 1e-9))
        last = max(first + 1, int(math.ceil((on + dur) / dt - 1e-9)))
        covered.update(k for k in range(first, min(last, n_samples)))
    return len(covered)


def _check_counts(timelines, runs, folder, column, n_samples):
    """Per run: image samples == samples the events overlap; distinct images == distinct
    names in the events' column. Returns {run: (image samples, events, distinct)}."""
    counts = {}
    for run in runs:
        events = pd.read_csv(DATA / folder / f"{run}_events.tsv", sep="\t")
        timeline = timelines[re.sub(r"_run-0*(\d+)", r"_run-\1", run)]  # labels: run-1
        images = [i for i in timeline["images"] if i is not None]
        assert len(timeline["images"]) == n_samples
        assert len(images) == _covered(events, n_samples), run
        assert {Path(i).name for i in images} == {Path(v).name for v in events[column]}, run
        counts[run] = (len(images), len(events), len(set(images)))
    return counts


def test_bold5000_bare_names_found_in_the_distributions_subfolders(bold5000, tmp_path):
    root, stimuli = bold5000
    out, work = tmp_path / "out", tmp_path / "work"
    proc = run_cli(root, out, "participant", "--stimuli-dir", stimuli, *FAST, "-w", work)
    logs = proc.stderr
    unit = "sub-CSI1_task-5000scenes: stimulus column 'stim_file' (detected by its name)"
    assert logs.count(unit) == 1, logs
    assert "111 distinct image/video file(s), 111 of them found by file name in" in logs
    assert "-> Scene_Stimuli/Presented_Stimuli/ImageNet/n01930112_19568.JPEG" in logs
    counts = _check_counts(_timelines(work), BOLD5000_RUNS, "ds001499", "stim_file", 388)
    assert {r: c[1:] for r, c in counts.items()} == {r: (37, 37) for r in BOLD5000_RUNS}
    for run, (samples, events, _) in counts.items():
        assert events < samples <= 3 * events  # a ~1-s image overlaps 1 to 3 1-s samples
    assert list((out / "sub-CSI1" / "ses-01" / "func").glob("*_desc-tinyclip_neurons.tsv"))
    print("BOLD5000 image samples per run (samples, events, distinct images):", counts)


def test_things_file_path_column_and_a_rerun_when_the_stimuli_change(things, tmp_path,
                                                                     monkeypatch, caplog):
    root, stimuli = things
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["participant", "--stim-column", "file_path", "--stimuli-dir", stimuli, *FAST]
    proc = run_cli(root, out, *args, "-w", work)
    names = {v for r in THINGS_RUNS for v in pd.read_csv(DATA / "ds004192" / f"{r}_events.tsv",
                                                         sep="\t")["file_path"]}
    # one unit (the sessions pooled, the default), one line
    line = (f"sub-01_task-things: stimulus column 'file_path' (--stim-column): {len(names)} "
            f"distinct image/video file(s), {len(names)} of them found by file name in "
            f"{stimuli} (e.g. 'dog/dog_12s.jpg' -> object_images/dog/dog_12s.jpg)")
    assert proc.stderr.count(line) == 1 and "stimulus column" not in proc.stderr.replace(
        line, ""), proc.stderr
    counts = _check_counts(_timelines(work), THINGS_RUNS, "ds004192", "file_path",
                           math.ceil(284 * 1.5))
    assert all(c[1] == 92 for c in counts.values())
    print("THINGS image samples per run (samples, events, distinct images):", counts)
    # the same options: finished, skipped; another stimuli folder or column: analysed again
    from nipype.pipeline.engine import Workflow

    ran = []
    monkeypatch.setattr(Workflow, "run", lambda self, plugin=None, plugin_args=None:
                        ran.append(self.name))
    caplog.set_level(logging.INFO)
    assert main([str(root), str(out), *map(str, args), "-w", str(work)]) == 0
    assert not ran and "finished earlier with the same inputs and options" in caplog.text
    copy = tmp_path / "things_copy"
    shutil.copytree(stimuli, copy)
    assert main([str(root), str(out), *map(str, args[:3]), "--stimuli-dir", str(copy),
                 *FAST, "-w", str(work)]) == 0
    assert len(ran) == 1
    image = next(copy.rglob("dog_12s.jpg"))
    write_image(image, seed=12345)  # a changed stimulus file under the same options
    assert main([str(root), str(out), *map(str, args[:3]), "--stimuli-dir", str(copy),
                 *FAST, "-w", str(work)]) == 0
    assert len(ran) == 2


def test_no_stimulus_column_lists_the_event_columns(things, tmp_path, capsys, caplog):
    root, stimuli = things
    caplog.set_level(logging.INFO)
    code = main([str(root), str(tmp_path / "out"), "participant", "--stim-column",
                 "condition", "--stimuli-dir", str(stimuli), *FAST, "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 65
    assert ("no stimulus of the selected stream(s) (image) in any selected run's events (event "
            "columns: onset, duration, trial_type, category_nr, exemplar_nr, test_image_nr, "
            "things_category_nr, things_exemplar_nr, response_time, file_path; looked for "
            "--stim-column condition)") in err, err
    assert caplog.text.count("none of the stimulus column(s) condition (--stim-column) is in "
                             "its events") == 1  # one per unit (sessions pooled)
    assert not (tmp_path / "out").exists()


def test_things_without_its_images_names_the_folder(things, tmp_path, capsys):
    root, _ = things
    code = main([str(root), str(tmp_path / "out"), "participant", *FAST, "-w",
                 str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 64
    assert (f"sub-01_ses-things01_task-things_run-01_events.tsv: file_path 'dog/dog_12s.jpg' "
            f"not found under {root / 'stimuli'}") in err, err


def test_stimuli_dir_usage_errors(things, tmp_path):
    root, _ = things
    for extra in (["--stimuli-dir", str(tmp_path / "nope")], ["--stim-column", ""],
                  ["--media-time-column", "a\tb"]):
        with pytest.raises(SystemExit) as exc:
            main([str(root), str(tmp_path / "out"), "participant", *extra])
        assert exc.value.code == 2


def test_an_ambiguous_bare_name_is_an_error_naming_both_files(bold5000, tmp_path, capsys):
    root, stimuli = bold5000
    copy = tmp_path / "stimuli"
    shutil.copytree(stimuli, copy)
    presented = copy / "Scene_Stimuli" / "Presented_Stimuli"
    shutil.copy(presented / "Scene" / "pasture9.jpg", presented / "COCO" / "pasture9.jpg")
    code = main([str(root), str(tmp_path / "out"), "participant", "--stimuli-dir", str(copy),
                 *FAST, "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 64
    assert ("sub-CSI1_ses-01_task-5000scenes_run-03_events.tsv: stim_file 'pasture9.jpg' on line "
            f"4 is not found as {copy / 'pasture9.jpg'}, and its file name is ambiguous in the "
            f"stimuli folder: {presented / 'COCO' / 'pasture9.jpg'} and "
            f"{presented / 'Scene' / 'pasture9.jpg'}") in err, err


# ------------------------------------------------------------------------- studyforrest

FILM_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
                (255, 0, 255), (128, 128, 128), (255, 128, 0), (0, 128, 255), (128, 0, 255)]


@pytest.fixture(scope="module")
def forrest(tmp_path_factory):
    """studyforrest (ds000113) movie run 1: the first 40 s of its real frame log (1000 rows of
    0.02-0.05 s with videotime), with the column a user adds naming the film segment, a 40-s
    synthetic film (a new colour every 4 s), 19 volumes at the real TR (2 s; the last rows
    start after the run's end)."""
    base = tmp_path_factory.mktemp("forrest")
    events = pd.read_csv(DATA / "ds000113" / "sub-01_ses-movie_task-movie_run-1_events.tsv",
                         sep="\t")
    events["stim_file"] = "fg_av_seg1.mp4"
    root = write_layout_dataset(base / "ds000113", {
        "sub-01/ses-movie/func/sub-01_ses-movie_task-movie_run-1": events},
        tr=2.00000061, n_scans=19, name="studyforrest miniature")
    shutil.copy(DATA / "ds000113" / "task-movie_bold.json", root)
    write_colour_video(root / "stimuli" / "fg_av_seg1.mp4", FILM_COLOURS, fps=25,
                       seconds_per_colour=4.0)
    return root, events


def test_frame_by_frame_log_with_media_time_column(forrest, tmp_path, monkeypatch, caplog):
    """With --media-time-column videotime each 1-s sample shows the film where the log says
    it was (about the sample's midpoint), not its first half second; without it, a warning
    names the option, once for the run, like the events after the run's end."""
    from bids_vlm.inputs.video import split_frame_item

    root, events = forrest
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["participant", *FAST]
    proc = run_cli(root, out, *args, "--media-time-column", "videotime", "-w", work)
    assert "again from its start" not in proc.stderr
    assert proc.stderr.count("event(s) start after the run ends") == 1, proc.stderr
    timeline = _timelines(work)["sub-01_ses-movie_task-movie_run-1"]
    frames = [split_frame_item(i) for i in timeline["images"]]
    assert len(frames) == 39  # 19 x 2.00000061 s
    times = np.array([t for _, t in frames])
    assert np.abs(times - (np.arange(39) + 0.5)).max() < 0.15, times
    assert {p for p, _ in frames} == {str(root / "stimuli" / "fg_av_seg1.mp4")}
    print("studyforrest frame times (s):", times.round(2).tolist())
    # without the option: the whole run would show the first 0.6 s (checked before the graph)
    from nipype.pipeline.engine import Workflow

    monkeypatch.setattr(Workflow, "run", lambda self, plugin=None, plugin_args=None: None)
    caplog.set_level(logging.INFO)
    assert main([str(root), str(tmp_path / "out2"), *args, "-w", str(tmp_path / "w2")]) == 0
    replay = [r.getMessage() for r in caplog.records if "again from its start" in r.getMessage()]
    assert len(replay) == 1 and "--media-time-column" in replay[0], caplog.text
    assert f"{len(events) - 1} consecutive row(s) show the video 'fg_av_seg1.mp4'" in replay[0]
    assert "(e.g. videotime, audiotime)" in replay[0]


# ------------------------------------------------------------------------- audio (Narratives)

def test_audio_stim_file_beside_word_events_is_ignored_with_one_warning(tmp_path):
    """Narratives: a .wav in stim_file on the first row, word-level text events after it; the
    text stream runs, the audio is ignored with one warning; with only the image stream
    selected there is nothing to analyse (exit 65, the audio named)."""
    rng = np.random.default_rng(0)
    words = "once upon a time there was a small cat that sat on a warm mat".split()
    onsets = np.sort(rng.uniform(2, 78, 120)).round(3)
    rows = pd.DataFrame({"onset": onsets, "duration": 0.3, "word": rng.choice(words, 120),
                         "stim_file": "n/a"})
    audio = pd.DataFrame({"onset": [0.0], "duration": [80.0], "word": ["n/a"],
                          "stim_file": ["pieman_audio.wav"]})
    runs = {f"sub-00{s}/func/sub-00{s}_task-pieman_run-1": pd.concat([audio, rows])
            for s in (1, 2)}
    root = write_layout_dataset(tmp_path / "narratives", runs, tr=1.5, n_scans=54)
    (root / "stimuli").mkdir()
    (root / "stimuli" / "pieman_audio.wav").write_bytes(b"RIFF" + bytes(40))
    proc = run_cli(root, tmp_path / "out", "participant", "--streams", "text", "--layers", "1",
                   "--no-encoding", "--n-surrogates", "0", "-w", tmp_path / "work")
    warning = ("1 audio file(s) named in the stimulus column are ignored (no stream reads "
               "audio; images, video frames and texts are analysed), e.g. 'pieman_audio.wav'")
    assert proc.stderr.count(warning) == 1, proc.stderr
    timelines = _timelines(tmp_path / "work")
    assert len(timelines) == 2
    for timeline in timelines.values():  # the audio row spanning the run owns no sample
        texts = [t for t in timeline["texts"] if t is not None]
        assert len(texts) == _covered(rows, 81) and set(texts) <= set(words)
    images = run_cli(root, tmp_path / "out2", "participant", "--streams", "image", "-w",
                     tmp_path / "work2", check=False)
    assert images.returncode == 65 and "1 audio file(s) ignored" in images.stderr, images.stderr


def test_stimulus_options_reach_the_configuration(tmp_path):
    """Flags and --config-file keys become the StimulusConfig (part of the fingerprint);
    naming the default stimuli folder is the default."""
    from bids_vlm.cli.parser import apply_config_file, build_parser, config_from_options

    root = tmp_path / "ds"
    (root / "stimuli").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = [str(root), str(tmp_path / "out"), "participant"]
    opts = build_parser().parse_args(base + [
        "--stim-column", "file_path", "stim_file", "--stimuli-dir", str(elsewhere),
        "--media-time-column", "videotime"])
    stimuli = config_from_options(opts).stimuli
    assert stimuli.stim_columns == ("file_path", "stim_file")
    assert stimuli.stimuli_dir == str(elsewhere.resolve())
    assert stimuli.media_time_column == "videotime"
    default = config_from_options(build_parser().parse_args(base)).stimuli
    named = config_from_options(build_parser().parse_args(
        base + ["--stimuli-dir", str(root / "stimuli")])).stimuli
    assert default == named and (default.stim_columns, default.stimuli_dir,
                                 default.media_time_column) == ((), "", "")
    toml = tmp_path / "cfg.toml"
    toml.write_text(f'stim_column = ["condition"]\nstimuli_dir = "{elsewhere}"\n'
                    'media_time_column = "videotime"\n')
    parser = build_parser()
    argv = base + ["--config-file", str(toml)]
    apply_config_file(parser, argv)
    from_file = config_from_options(parser.parse_args(argv)).stimuli
    assert (from_file.stim_columns, from_file.stimuli_dir, from_file.media_time_column) == (
        ("condition",), str(elsewhere.resolve()), "videotime")


def test_things_catch_trials_excluded(things, tmp_path):
    """--exclude-trial-types catch: the catch images leave the timeline, the others stay."""
    root, stimuli = things
    work = tmp_path / "work"
    run_cli(root, tmp_path / "out", "participant", "--stimuli-dir", stimuli,
            "--exclude-trial-types", "catch", *FAST, "-w", work)
    timelines = _timelines(work)
    for run in THINGS_RUNS:
        events = pd.read_csv(DATA / "ds004192" / f"{run}_events.tsv", sep="\t")
        kept = events[events.trial_type != "catch"]
        images = [i for i in timelines[re.sub(r"_run-0*(\d+)", r"_run-\1", run)]["images"] if i]
        assert len(images) == _covered(kept, math.ceil(284 * 1.5))
        assert {Path(i).name for i in images} == {Path(v).name for v in kept.file_path}
        assert not any(Path(i).name.startswith("catch") for i in images)


def test_bold5000_fmriprep_1x_derivatives_are_used(bold5000, tmp_path):
    """BOLD5000's fMRIPrep 1.0 outputs (``_bold_space-T1w_preproc.nii.gz``,
    ``_bold_space-T1w_brainmask.nii.gz`` and the real ``_bold_confounds.tsv`` with its 1.x column
    names, X ... RotZ, aCompCor00, NonSteadyStateOutlier00) are found and used."""
    import nibabel as nib

    root, stimuli = bold5000
    data = tmp_path / "ds001499"
    shutil.copytree(root, data)
    run = BOLD5000_RUNS[0]
    func = data / "derivatives" / "fmriprep" / "sub-CSI1" / "ses-01" / "func"
    func.mkdir(parents=True)
    raw = nib.load(data / f"{_stem(run)}_bold.nii.gz")
    nib.save(raw, func / f"{run}_bold_space-T1w_preproc.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(raw.shape[:3], np.uint8), raw.affine),
             func / f"{run}_bold_space-T1w_brainmask.nii.gz")
    shutil.copy(DATA / "ds001499" / f"{run}_bold_confounds.tsv", func)
    out = tmp_path / "out"
    proc = run_cli(data, out, "participant", "--stimuli-dir", stimuli, "--run", "1", *FAST,
                   "-w", tmp_path / "work")
    assert "no preprocessed BOLD found" not in proc.stderr
    assert "without dataset_description.json" in proc.stderr  # as the 1.0 outputs ship
    side = json.loads(next((out / "sub-CSI1" / "ses-01" / "func").glob(
        "*_space-T1w_desc-tinyclip_neurons.json")).read_text())
    assert side["BOLDInput"].startswith("preprocessed")
    assert side["Sources"][0].endswith(f"{run}_bold_space-T1w_preproc.nii.gz")
