"""Bad-input cases of the stimulus options (issue 14: --stim-column, --stimuli-dir,
--media-time-column, audio), run by the catalogue's own harness
(``tests/e2e/test_badinput.py::test_bad_input``) on the planted dataset: exit code, message naming
the file and the problem, the input never written. Their README rows are :func:`readme_rows`.
"""
from __future__ import annotations

import shutil

import pytest
from datagen import write_colour_video

import test_badinput as catalogue
from test_badinput import RUN1, Case


def _ambiguous_name(ctx):
    stim = ctx.bids / "stimuli"
    for folder in ("a", "b"):
        (stim / folder).mkdir()
        shutil.copy(stim / "img03.png", stim / folder / "img03.png")
    (stim / "img03.png").unlink()


def _video_in_row(*rows):
    def breaks(ctx):
        write_colour_video(ctx.bids / "stimuli" / "clip.mp4", [(255, 0, 0), (0, 0, 255)],
                           fps=10, seconds_per_colour=4.0)

        def edit(table):
            for row in rows:
                table.loc[row, "stim_file"] = "clip.mp4"
        ctx.edit_events(edit)
    return breaks


def _media_time_missing(ctx):
    _video_in_row(0)(ctx)
    ctx.args += ["--media-time-column", "videotime"]


def _audio_stimulus(ctx):
    (ctx.bids / "stimuli" / "story.wav").write_bytes(b"RIFF" + bytes(40))
    ctx.edit_events(lambda t: t.loc.__setitem__((2, "stim_file"), "story.wav"))


CASES = [
    Case("stimulus-ambiguous-name", "stim_file found by file name in two subfolders of stimuli/",
         _ambiguous_name, 64, "is not found as {bids}/stimuli/img03.png, and its file name is "
         "ambiguous in the stimuli folder: {bids}/stimuli/a/img03.png and "
         "{bids}/stimuli/b/img03.png"),
    Case("no-stimulus-column", "--stim-column that the events lack (image stream)",
         lambda ctx: ctx.args.extend(["--stim-column", "condition"]), 65,
         f"{RUN1}_events.tsv: no stimulus of the selected stream(s) (image) in any selected "
         "run's events (event columns: onset, duration, trial_type, stim_file, caption; "
         "looked for --stim-column condition)"),
    Case("stimuli-dir-missing", "--stimuli-dir that does not exist",
         lambda ctx: ctx.args.extend(["--stimuli-dir", str(ctx.tmp / "nope")]), 2,
         "argument --stimuli-dir: directory does not exist: "),
    Case("media-time-column-missing", "--media-time-column that the events of a video lack",
         _media_time_missing, 64, f"{RUN1}_events.tsv: media time column 'videotime' "
         "(--media-time-column) is not in the events file (columns: onset, duration, "
         "trial_type, stim_file, caption)"),
    Case("video-replayed", "consecutive rows of one video without --media-time-column "
         "(exit 0: warned)", _video_in_row(0, 1, 2), 0,
         f"{RUN1}_events.tsv: 2 consecutive row(s) show the video 'clip.mp4' again from its "
         "start (each row is shown from 0 s); if the rows log one playback (e.g. frame by "
         "frame), give --media-time-column"),
    Case("audio-stimulus", "a .wav in stim_file (exit 0: ignored)", _audio_stimulus, 0,
         "1 audio file(s) named in the stimulus column are ignored (no stream reads audio; "
         "images, video frames and texts are analysed), e.g. 'story.wav'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_stimulus_bad_input(case, planted, tmp_path, capsys, caplog, monkeypatch):
    catalogue.test_bad_input(case, planted, tmp_path, capsys, caplog, monkeypatch)


def readme_rows() -> list[str]:
    """The rows of these cases for the README's bad-input table."""
    saved = catalogue.CASES
    try:
        catalogue.CASES = CASES
        return catalogue.readme_rows()
    finally:
        catalogue.CASES = saved


def test_readme_table_has_these_rows():
    text = (catalogue.REPO / "README.md").read_text()
    missing = [row for row in readme_rows() if row not in text]
    assert not missing, "update the README's bad-input table:\n" + "\n".join(missing)
