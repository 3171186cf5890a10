"""Stage 2: events.tsv -> stimulus timeline (bids_vlm/inputs/stimuli.py)."""
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_vlm.config import StimulusConfig
from bids_vlm.errors import DataError
from bids_vlm.inputs.stimuli import Timeline, build_timeline, read_events, unique_stimuli


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def _events(rows, **columns):
    """DataFrame of (onset, duration) rows, with a 'text' column naming each event by default."""
    onsets, durations = zip(*rows) if rows else ((), ())
    data = {"onset": list(map(float, onsets)), "duration": list(map(float, durations))}
    data.update(columns or {"text": [chr(ord("A") + i) for i in range(len(rows))]})
    return pd.DataFrame(data)


# read_events ------------------------------------------------------------------------------------

def test_read_events_parses_numbers_and_na(tmp_path):
    path = _write(tmp_path / "e.tsv", "onset\tduration\ttrial_type\n0\t2\tface\n2.5\tn/a\tn/a\n")
    ev = read_events(path)
    assert ev["onset"].tolist() == [0.0, 2.5]
    assert ev["duration"].tolist() == [2.0, 0.0]  # n/a duration -> 0 (instantaneous)
    assert ev["trial_type"].iloc[0] == "face" and pd.isna(ev["trial_type"].iloc[1])


@pytest.mark.parametrize("missing", ["onset", "duration"])
def test_read_events_requires_columns(tmp_path, missing):
    other = "duration" if missing == "onset" else "onset"
    path = _write(tmp_path / "e.tsv", f"{other}\ttrial_type\n1\tx\n")
    with pytest.raises(DataError, match=f"required column '{missing}'") as err:
        read_events(path)
    assert str(path) in str(err.value)


def test_read_events_non_numeric_onset_names_file_and_line(tmp_path):
    path = _write(tmp_path / "e.tsv", "onset\tduration\n0\t1\n1\t1\nabc\t1\n")
    with pytest.raises(DataError) as err:
        read_events(path)
    msg = str(err.value)
    assert str(path) in msg and "line 4" in msg and "'abc'" in msg and "onset" in msg
    assert err.value.exit_code == 64


def test_read_events_missing_onset_value_is_an_error(tmp_path):
    path = _write(tmp_path / "e.tsv", "onset\tduration\n0\t1\nn/a\t1\n")
    with pytest.raises(DataError, match="line 3"):
        read_events(path)


def test_read_events_negative_onset(tmp_path):
    path = _write(tmp_path / "e.tsv", "onset\tduration\n0\t1\n-1.5\t1\n")
    with pytest.raises(DataError, match="negative onset on line 3") as err:
        read_events(path)
    assert str(path) in str(err.value)


def test_read_events_non_utf8(tmp_path):
    path = _write(tmp_path / "e.tsv", "onset\tduration\tword\n0\t1\tcaf\u00e9\n", "latin-1")
    with pytest.raises(DataError, match="not UTF-8") as err:
        read_events(path)
    assert str(path) in str(err.value)


# build_timeline: sampling -----------------------------------------------------------------------

def test_sample_grid_covers_run():
    tl = build_timeline(_events([(0, 1)]), 4.5, StimulusConfig(stim_rate=2.0))
    assert tl.dt == 0.5
    np.testing.assert_allclose(tl.times, np.arange(9) * 0.5)  # ceil(4.5 / 0.5) samples
    assert len(tl.texts) == len(tl.images) == 9


def test_sample_k_covers_k_over_rate_to_k_plus_1_over_rate():
    # event on [1.0, 2.0) at 1 Hz is exactly sample 1, not sample 0 or 2
    tl = build_timeline(_events([(1.0, 1.0)]), 4, StimulusConfig(stim_rate=1.0))
    assert tl.texts == (None, "A", None, None)
    # at 4 Hz, [1.0, 1.5) is samples 4 and 5
    tl = build_timeline(_events([(1.0, 0.5)]), 2, StimulusConfig(stim_rate=4.0))
    assert tl.texts == (None,) * 4 + ("A", "A") + (None,) * 2


def test_event_covering_largest_part_wins():
    # sample 1 = [1, 2): A covers 0.3 s, B covers 0.7 s -> B; sample 3 blank
    ev = _events([(0.0, 1.3), (1.3, 1.7)])
    tl = build_timeline(ev, 4, StimulusConfig())
    assert tl.texts == ("A", "B", "B", None)
    # reversed proportions: A covers 0.8 s of sample 1
    ev = _events([(0.0, 1.8), (1.8, 1.2)])
    assert build_timeline(ev, 4, StimulusConfig()).texts == ("A", "A", "B", None)


def test_short_events_are_not_missed():
    # 0.1 s event inside sample 2, 0.05 s events inside samples 0 and 4 (1 Hz)
    ev = _events([(2.3, 0.1), (0.5, 0.05), (4.9, 0.05)])
    tl = build_timeline(ev, 6, StimulusConfig())
    assert tl.texts == ("B", None, "A", None, "C", None)


def test_zero_duration_events():
    ev = _events([(2.5, 0.0), (4.0, 0.0), (0.0, 1.0), (0.2, 0.0)])
    tl = build_timeline(ev, 6, StimulusConfig())
    # instantaneous events show in the sample they fall in; a real event covering the sample wins
    assert tl.texts == ("C", None, "A", None, "B", None)


def test_events_after_run_end_are_ignored(caplog):
    ev = _events([(0.0, 1.0), (4.5, 3.0), (10.0, 2.0), (7.0, 0.0)])
    with caplog.at_level(logging.WARNING):
        tl = build_timeline(ev, 5, StimulusConfig(), source="sub-01_events.tsv")
    assert tl.texts == ("A", None, None, None, "B")  # B is clipped at the run end
    assert not caplog.text  # the runner warns, once per run (tests/e2e/test_badinput.py)


def test_blank_samples_are_none_for_both_modalities():
    tl = build_timeline(_events([]), 3, StimulusConfig())
    assert tl.images == (None, None, None) and tl.texts == (None, None, None)


# build_timeline: text ---------------------------------------------------------------------------

def test_text_from_default_column_order():
    ev = _events([(0, 1), (1, 1)], word=["w1", "w2"], caption=["c1", "n/a"])
    ev.loc[1, "caption"] = np.nan
    tl = build_timeline(ev, 3, StimulusConfig())
    assert tl.texts == ("c1", None, None)  # 'caption' comes before 'word'; NaN text -> None


def test_text_from_chosen_column():
    ev = _events([(0, 1), (1, 1)], word=["w1", "w2"], caption=["c1", "c2"])
    tl = build_timeline(ev, 2, StimulusConfig(text_column="word"))
    assert tl.texts == ("w1", "w2")


def test_text_column_missing_is_data_error():
    ev = _events([(0, 1)], caption=["c1"])
    with pytest.raises(DataError, match="text column 'sentence'") as err:
        build_timeline(ev, 2, StimulusConfig(text_column="sentence"), source="x_events.tsv")
    assert "x_events.tsv" in str(err.value)


def test_text_from_template():
    ev = _events([(0, 1), (1, 1), (2, 1)], trial_type=["dog", "cat", np.nan])
    tl = build_timeline(ev, 4, StimulusConfig(text_template="a photo of a {trial_type}"))
    assert tl.texts == ("a photo of a dog", "a photo of a cat", None, None)


def test_text_column_wins_over_template():
    ev = _events([(0, 1)], trial_type=["dog"], text=["hello"])
    tl = build_timeline(ev, 1, StimulusConfig(text_template="a photo of a {trial_type}"))
    assert tl.texts == ("hello",)


def test_template_with_unknown_column_is_data_error():
    ev = _events([(0, 1)], trial_type=["dog"])
    with pytest.raises(DataError, match="condition"):
        build_timeline(ev, 1, StimulusConfig(text_template="{condition}"))


def test_numeric_text_column_is_kept_as_text(tmp_path):
    path = _write(tmp_path / "e.tsv", "onset\tduration\tword\n0\t1\t3\n1\t1\t7\n")
    tl = build_timeline(read_events(path), 2, StimulusConfig())
    assert tl.texts == ("3", "7")


# build_timeline: images -------------------------------------------------------------------------

def test_images_resolved_under_stimuli_dir(tmp_path):
    stim = tmp_path / "stimuli"
    (stim / "sub").mkdir(parents=True)
    (stim / "a.png").write_bytes(b"x")
    (stim / "sub" / "b.JPG").write_bytes(b"x")
    ev = _events([(0, 1), (1, 1), (2, 1)], stim_file=["a.png", "sub/b.JPG", np.nan])
    tl = build_timeline(ev, 4, StimulusConfig(), stimuli_dir=stim)
    assert tl.images == (str((stim / "a.png").resolve()), str((stim / "sub/b.JPG").resolve()),
                         None, None)
    assert tl.texts == (None,) * 4


def test_symlinks_inside_the_stimuli_folder_or_to_a_git_annex_are_followed(tmp_path):
    """A link within stimuli/ and a DataLad / git-annex link into the dataset's
    .git/annex/objects are read (as their link path, which keeps the extension)."""
    stim = tmp_path / "ds" / "stimuli"
    (stim / "sub").mkdir(parents=True)
    (stim / "sub" / "real.png").write_bytes(b"x")
    (stim / "inside.png").symlink_to(stim / "sub" / "real.png")
    annexed = tmp_path / "ds" / ".git" / "annex" / "objects" / "Xy" / "SHA256E-s1--ab" / "f"
    annexed.parent.mkdir(parents=True)
    annexed.write_bytes(b"x")
    (stim / "annexed.png").symlink_to(Path("..") / ".git" / "annex" / "objects" / "Xy" /
                                      "SHA256E-s1--ab" / "f")
    ev = _events([(0, 1), (1, 1), (2, 1)], stim_file=["inside.png", "annexed.png",
                                                      "sub/./real.png"])
    tl = build_timeline(ev, 3, StimulusConfig(), stimuli_dir=stim)
    assert tl.images == (str(stim / "inside.png"), str(stim / "annexed.png"),
                         str(stim / "sub" / "real.png"))


@pytest.mark.parametrize("value, problem", [
    ("../secret.png", "is outside the stimuli folder"),
    ("sub/../../secret.png", "is outside the stimuli folder"),
    ("/abs/secret.png", "is outside the stimuli folder"),
    ("link.png", "is a symbolic link to"),
    ("folder.png", "is a directory, not an image or video file"),
    ("fifo.png", "is not a regular file"),
])
def test_stimuli_outside_the_folder_or_not_files_are_refused(tmp_path, value, problem):
    stim = tmp_path / "stimuli"
    (stim / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (stim / "link.png").symlink_to(tmp_path / "secret.png")
    (stim / "folder.png").mkdir()
    os.mkfifo(stim / "fifo.png")
    ev = _events([(0, 1), (1, 1)], stim_file=[np.nan, value])
    with pytest.raises(DataError) as err:
        build_timeline(ev, 2, StimulusConfig(), stimuli_dir=stim, source="r_events.tsv")
    assert str(err.value).startswith(f"r_events.tsv: stim_file '{value}' on line 3 ")
    assert problem in str(err.value)


def test_missing_stim_file_is_data_error(tmp_path):
    ev = _events([(0, 1)], stim_file=["nothere.png"])
    with pytest.raises(DataError, match="nothere.png") as err:
        build_timeline(ev, 1, StimulusConfig(), stimuli_dir=tmp_path, source="r_events.tsv")
    assert "r_events.tsv" in str(err.value)


def test_unsupported_extension_is_data_error(tmp_path):
    (tmp_path / "clip.xyz").write_bytes(b"x")
    ev = _events([(0, 1)], stim_file=["clip.xyz"])
    with pytest.raises(DataError, match="clip.xyz.*neither an image"):
        build_timeline(ev, 1, StimulusConfig(), stimuli_dir=tmp_path)


# unique_stimuli, Timeline ------------------------------------------------------------------------

def test_unique_stimuli_sorted_without_blanks():
    t1 = Timeline(np.arange(3.0), 1.0, ("/b.png", None, "/a.png"), ("y", None, "x"))
    t2 = Timeline(np.arange(2.0), 1.0, ("/a.png", "/c.png"), (None, "y"))
    assert unique_stimuli([t1, t2]) == (["/a.png", "/b.png", "/c.png"], ["x", "y"])
    assert unique_stimuli([]) == ([], [])


def test_timeline_dict_round_trip():
    tl = Timeline(np.array([0.0, 0.5]), 0.5, ("/a.png", None), (None, "t"))
    back = Timeline.from_dict(tl.to_dict())
    np.testing.assert_array_equal(back.times, tl.times)
    assert (back.dt, back.images, back.texts) == (tl.dt, tl.images, tl.texts)


def test_text_window_collects_transcript_words(tmp_path):
    path = _write(tmp_path / "words.tsv", "onset\tduration\tword\n0.2\t0.3\tthe\n0.7\t0.3\tcat\n"
                  "1.6\t0.3\tsat\n4.5\t0.3\tdown\n")
    tl = build_timeline(read_events(path), 6, StimulusConfig(text_window=2.0))
    # samples end at 1, 2, 3, ...: words with onsets in (end - 2, end]
    assert tl.texts == ("the cat", "the cat sat", "sat", None, "down", "down")
    plain = build_timeline(read_events(path), 6, StimulusConfig())
    assert plain.texts[1:3] == ("sat", None)  # without a window: the word covering the sample


def test_sampling_is_safe_from_floating_point_error():
    from bids_vlm.inputs.stimuli import _owner_event

    # 0.3 / 0.1 is 2.9999...: the event must not reach back into sample [0.2, 0.3)
    assert _owner_event(np.array([0.3]), np.array([0.2]), 6, 0.1).tolist() == [-1, -1, -1, 0,
                                                                                0, -1]


def test_text_window_boundaries(tmp_path):
    path = _write(tmp_path / "w.tsv", "onset\tduration\tword\n0\t0.2\tw0\n1\t0.2\tw1\n"
                  "2\t0.2\tw2\n3\t0.2\tw3\n")
    tl = build_timeline(read_events(path), 4, StimulusConfig(text_window=1.0))
    assert tl.texts == ("w0", "w1", "w2", "w3")  # a word starting at a sample's start is in it


def test_a_git_annex_store_that_is_a_link_or_another_repositorys_is_not_trusted(tmp_path):
    """A dataset shipping stimuli/.git/annex/objects -> / would make any link target look
    annexed; and only the nearest repository's store counts, not an enclosing one's."""
    outer = tmp_path / "home"
    (outer / ".git" / "annex" / "objects").mkdir(parents=True)
    (outer / ".git" / "annex" / "objects" / "f").write_bytes(b"x")
    ds = outer / "ds"
    stim = ds / "stimuli"
    stim.mkdir(parents=True)
    (ds / ".git" / "annex").mkdir(parents=True)
    (ds / ".git" / "annex" / "objects").symlink_to(tmp_path)  # the store is a link: refused
    (tmp_path / "secret.png").write_bytes(b"x")
    (stim / "a.png").symlink_to(tmp_path / "secret.png")
    (stim / "b.png").symlink_to(outer / ".git" / "annex" / "objects" / "f")
    for name in ("a.png", "b.png"):
        ev = _events([(0, 1)], stim_file=[name])
        with pytest.raises(DataError, match="is a symbolic link to .*outside the stimuli"):
            build_timeline(ev, 1, StimulusConfig(), stimuli_dir=stim, source="r_events.tsv")


# stimulus column, stimuli folder, media time, audio (issue 14) ---------------------------------

def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize("column", ["file_path", "Stim_File", "stimulus", "image", "movie",
                                    "video", "stim"])
def test_usual_stimulus_columns_are_detected(tmp_path, column):
    from bids_vlm.inputs.stimulus_files import stimulus_columns

    _touch(tmp_path / "dog" / "dog_12s.jpg")
    ev = _events([(0, 1), (1, 1)], trial_type=["exp", "exp"],
                 **{column: ["dog/dog_12s.jpg", np.nan]})
    assert stimulus_columns(ev).columns == (column,)
    tl = build_timeline(ev, 2, StimulusConfig(), stimuli_dir=tmp_path)
    assert tl.images == (str(tmp_path / "dog" / "dog_12s.jpg"), None)


def test_a_column_of_labels_is_not_a_stimulus_column_but_one_of_file_names_is(tmp_path):
    """'stimulus' holding condition labels is not taken for file names (a dataset that
    analysed its trial types as text keeps working); an unusual column whose every value is a
    media file name is (NOD names its COCO images in 'condition')."""
    from bids_vlm.inputs.stimulus_files import stimulus_columns

    _touch(tmp_path / "COCO_val2014_000000000042.jpg")
    labels = _events([(0, 1)], stimulus=["face"], trial_type=["face"])
    assert stimulus_columns(labels).columns == ()
    tl = build_timeline(labels, 1, StimulusConfig(text_template="a {trial_type}"),
                        stimuli_dir=tmp_path)
    assert tl.images == (None,) and tl.texts == ("a face",)
    files = _events([(0, 1), (1, 1)], condition=["COCO_val2014_000000000042.jpg", np.nan])
    found = stimulus_columns(files)
    assert (found.columns, found.how) == (("condition",), "content")
    assert "detected: its values are media file names" in found.describe()


def test_stim_columns_first_non_empty_value_wins(tmp_path):
    from bids_vlm.inputs.stimulus_files import stimulus_columns

    for name in ("a.png", "b.png", "c.png"):
        _touch(tmp_path / name)
    ev = _events([(0, 1), (1, 1), (2, 1)], extra=["a.png", np.nan, "c.png"],
                 stim_file=["b.png", "b.png", np.nan])
    config = StimulusConfig(stim_columns=("extra", "absent", "stim_file"))
    assert stimulus_columns(ev, config.stim_columns).missing == ("absent",)
    tl = build_timeline(ev, 4, config, stimuli_dir=tmp_path)
    assert [None if p is None else Path(p).name for p in tl.images] == ["a.png", "b.png",
                                                                         "c.png", None]
    none = build_timeline(ev, 1, StimulusConfig(stim_columns=("absent",)), stimuli_dir=tmp_path)
    assert none.images == (None,)  # the runner says that the column is missing


def test_bold5000_bare_names_resolve_in_subfolders_with_one_index(tmp_path, monkeypatch):
    """BOLD5000 names its images bare; the distributed files sit in COCO/, ImageNet/ and
    Scene/: each is found by its file name through one index of the tree."""
    from bids_vlm.inputs import stimulus_files

    stim = tmp_path / "BOLD5000_Stimuli"
    names = {"ImageNet": ["n01930112_19568.JPEG", "n03733281_29214.JPEG"],
             "COCO": ["COCO_train2014_000000420713.jpg"], "Scene": ["pasture9.jpg"]}
    for folder, files in names.items():
        for name in files:
            _touch(stim / folder / name)
    builds = []
    real = stimulus_files._build_index
    monkeypatch.setattr(stimulus_files, "_build_index",
                        lambda root: builds.append(root) or real(root))
    flat = [n for files in names.values() for n in files]
    ev = _events([(2 * i, 1) for i in range(8)], stim_file=(flat * 2))
    tl = build_timeline(ev, 16, StimulusConfig(stimuli_dir=str(stim)), stimuli_dir=tmp_path)
    expected = {n: str(stim / f / n) for f, files in names.items() for n in files}
    assert tl.images[0::2] == tuple(expected[n] for n in flat * 2)
    build_timeline(ev, 16, StimulusConfig(stimuli_dir=str(stim)))
    assert len(builds) == 1  # once per process, not per event or per run


def test_a_path_not_found_is_looked_up_by_name_preferring_the_same_ending(tmp_path):
    _touch(tmp_path / "object_images" / "dog" / "dog_12s.jpg")
    _touch(tmp_path / "other" / "dog_12s.jpg")
    ev = _events([(0, 1)], file_path=["dog/dog_12s.jpg"])
    tl = build_timeline(ev, 1, StimulusConfig(), stimuli_dir=tmp_path)
    assert tl.images == (str(tmp_path / "object_images" / "dog" / "dog_12s.jpg"),)


def test_an_ambiguous_file_name_is_an_error_naming_both_paths(tmp_path):
    first = _touch(tmp_path / "COCO" / "x.jpg")
    second = _touch(tmp_path / "Scene" / "x.jpg")
    ev = _events([(0, 1)], stim_file=["x.jpg"])
    with pytest.raises(DataError) as err:
        build_timeline(ev, 1, StimulusConfig(), stimuli_dir=tmp_path, source="r_events.tsv")
    msg = str(err.value)
    assert msg.startswith("r_events.tsv: stim_file 'x.jpg' on line 2 ")
    assert str(first) in msg and str(second) in msg and "ambiguous" in msg


def test_lookup_by_name_keeps_the_stimuli_folder_rule(tmp_path):
    """'..' and absolute values are refused before any lookup by name; a file found by name
    that is a link out of the folder is refused; a linked folder is not walked."""
    stim = tmp_path / "stimuli"
    outside = tmp_path / "outside"
    _touch(outside / "secret.png")
    _touch(stim / "sub" / "secret.png")  # a file of that name inside does not make '..' valid
    (stim / "deep").mkdir()
    (stim / "deep" / "leak.png").symlink_to(outside / "secret.png")
    (stim / "linked").symlink_to(outside, target_is_directory=True)
    _touch(outside / "only_outside.png")
    cases = [("../outside/secret.png", "is outside the stimuli folder"),
             (str(outside / "secret.png"), "is outside the stimuli folder"),
             ("leak.png", "is a symbolic link to"),
             ("only_outside.png", "not found under")]
    for value, problem in cases:
        ev = _events([(0, 1)], stim_file=[value])
        with pytest.raises(DataError, match=problem):
            build_timeline(ev, 1, StimulusConfig(), stimuli_dir=stim, source="r_events.tsv")


def test_stimuli_dir_of_the_config_wins(tmp_path):
    _touch(tmp_path / "elsewhere" / "a.png")
    ev = _events([(0, 1)], stim_file=["a.png"])
    tl = build_timeline(ev, 1, StimulusConfig(stimuli_dir=str(tmp_path / "elsewhere")),
                        stimuli_dir=tmp_path / "stimuli")
    assert tl.images == (str(tmp_path / "elsewhere" / "a.png"),)


def test_audio_stimuli_are_ignored_other_extensions_are_errors(tmp_path):
    _touch(tmp_path / "story.wav")
    ev = _events([(0, 2), (0.5, 0.3), (1.2, 0.3)], stim_file=["story.wav", np.nan, np.nan],
                 word=[np.nan, "once", "upon"])
    tl = build_timeline(ev, 2, StimulusConfig(), stimuli_dir=tmp_path)
    assert tl.images == (None, None) and tl.texts == ("once", "upon")  # audio owns no sample
    words = build_timeline(ev, 2, StimulusConfig(text_window=1.0), stimuli_dir=tmp_path)
    assert words.texts == ("once", "upon")
    bad = _events([(0, 1)], stim_file=["story.psd"])
    with pytest.raises(DataError, match="neither an image .* audio files .* are ignored"):
        build_timeline(bad, 1, StimulusConfig(), stimuli_dir=tmp_path)


def _frame_log(n_rows=100, frame=0.04, start=0.12, lag=0.08):
    """A studyforrest-like log: one row per video frame, ``videotime`` = onset - ``lag``."""
    onsets = start + frame * np.arange(n_rows)
    return pd.DataFrame({"onset": onsets, "duration": frame, "frameidx": np.arange(1, n_rows + 1),
                         "videotime": np.round(onsets - lag, 3), "stim_file": "film.mp4"})


def test_media_time_column_shows_the_video_from_the_logged_position(tmp_path):
    from bids_vlm.inputs.video import split_frame_item

    _touch(tmp_path / "film.mp4")
    ev = _frame_log()
    plain = build_timeline(ev, 4, StimulusConfig(), stimuli_dir=tmp_path)
    replay = [split_frame_item(i)[1] for i in plain.images]
    assert max(replay) < 0.6  # every sample shows the first half second of the film again
    tl = build_timeline(ev, 4, StimulusConfig(media_time_column="videotime"),
                        stimuli_dir=tmp_path)
    times = [split_frame_item(i)[1] for i in tl.images]
    # sample k's owner is its first frame row; its midpoint k + 0.5 is 0.08 s later in the film
    assert times == pytest.approx([0.42, 1.42, 2.42, 3.42], abs=0.05)


def test_media_time_column_errors(tmp_path):
    _touch(tmp_path / "film.mp4")
    ev = _frame_log(10)
    with pytest.raises(DataError, match="media time column 'movietime' .*columns: onset"):
        build_timeline(ev, 1, StimulusConfig(media_time_column="movietime"),
                       stimuli_dir=tmp_path, source="r_events.tsv")
    ev["videotime"] = ev["videotime"].astype(str)
    ev.loc[3, "videotime"] = "0:04"
    with pytest.raises(DataError, match="must hold seconds >= 0; line 5 is '0:04'"):
        build_timeline(ev, 1, StimulusConfig(media_time_column="videotime"),
                       stimuli_dir=tmp_path)
    images = _events([(0, 1)], stim_file=["a.png"])
    _touch(tmp_path / "a.png")  # no video: the column is not needed
    assert build_timeline(images, 1, StimulusConfig(media_time_column="videotime"),
                          stimuli_dir=tmp_path).images == (str(tmp_path / "a.png"),)


def test_rows_that_replay_a_video_are_detected():
    from bids_vlm.inputs.stimulus_checks import replayed_rows

    ev = _frame_log(50)
    assert replayed_rows(ev, list(ev["stim_file"])) == (49, "film.mp4")
    trials = _events([(0, 3), (10, 3), (20, 3)], stim_file=["a.mp4", "a.mp4", "b.mp4"])
    assert replayed_rows(trials, list(trials["stim_file"])) == (0, "")  # separate showings
    images = _events([(0, 1), (1, 1)], stim_file=["a.png", "a.png"])
    assert replayed_rows(images, list(images["stim_file"])) == (0, "")


def test_stimulus_files_for_the_fingerprint(tmp_path):
    from bids_vlm.inputs.stimulus_files import stimulus_files

    _touch(tmp_path / "stim" / "ImageNet" / "n1.JPEG")
    _touch(tmp_path / "stim" / "a.png")
    _touch(tmp_path / "stim" / "story.wav")
    events = _write(tmp_path / "e.tsv", "onset\tduration\tfile_path\n0\t1\tn1.JPEG\n"
                    "1\t1\ta.png\n2\t1\tstory.wav\n3\t1\tmissing.png\n4\t1\ta.png\n")
    assert stimulus_files(events, tmp_path / "stim") == [
        str(tmp_path / "stim" / "ImageNet" / "n1.JPEG"), str(tmp_path / "stim" / "a.png")]
    assert stimulus_files(events, tmp_path / "stim", ("other",)) == []
    assert stimulus_files(tmp_path / "nothing.tsv", tmp_path) == []


# --exclude-trial-types ------------------------------------------------------------------------

def test_excluded_trial_types_are_left_out_before_the_timeline():
    """THINGS-like: catch trials (and an oddball) leave no sample; the others keep theirs."""
    ev = _events([(0, 1), (1, 1), (2, 1), (3, 1)], caption=["a", "b", "c", "d"],
                 trial_type=["exp", "catch", "exp", "oddball"])
    tl = build_timeline(ev, 4, StimulusConfig(exclude_trial_types=("catch", "oddball")))
    assert tl.texts == ("a", None, "c", None)
    assert build_timeline(ev, 4, StimulusConfig()).texts == ("a", "b", "c", "d")


def test_excluding_trial_types_needs_the_column():
    ev = _events([(0, 1)], caption=["a"])
    with pytest.raises(DataError, match="--exclude-trial-types needs a trial_type column") as err:
        build_timeline(ev, 2, StimulusConfig(exclude_trial_types=("catch",)),
                       source="y_events.tsv")
    assert "y_events.tsv" in str(err.value)
