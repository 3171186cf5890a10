"""What is said about the stimuli of the selected runs before the graph runs (by the runner,
once, so that the graph's timeline nodes, which build the same timelines, say nothing again).

Per analysis unit one INFO line names the stimulus column and how its values were found; one
warning covers every audio file named (no stream reads audio); one warning per run whose
consecutive rows show one video each from its start (a frame-by-frame log without
``--media-time-column``); and the event columns go into the message when no run has a
stimulus of the selected streams.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_vlm.config import StimulusConfig
from bids_vlm.inputs.stimulus_files import (
    STIM_COLUMNS,
    StimulusColumns,
    media_kind,
    name_index,
    row_values,
    stimulus_columns,
)

LOGGER = logging.getLogger("bids_vlm.inputs.stimuli")
CONTIGUOUS = 0.5  # seconds: a row starting this soon after the previous row's end continues it


@dataclass(frozen=True)
class RunStimuli:
    """The stimulus files of one run's events.

    columns: where they come from; event_columns: every column of the events; media: the
    distinct image and video values; by_name: (value, path relative to the stimuli folder)
    of the values found by file name in its tree; audio: distinct audio values (ignored);
    replays: rows that show their video from its start right after a row of the same video
    (0 with a media time column), and ``replayed`` the first such video.
    """

    columns: StimulusColumns
    event_columns: tuple
    media: tuple = ()
    by_name: tuple = ()
    audio: tuple = ()
    replays: int = 0
    replayed: str = ""


def inspect_run(events: pd.DataFrame, config: StimulusConfig, root) -> RunStimuli:
    """:class:`RunStimuli` of a run's ``events`` (as read by ``read_events``) whose stimulus
    files are under the folder ``root`` (the timeline has resolved them already)."""
    found = stimulus_columns(events, config.stim_columns)
    values = [v for v, _ in row_values(events, found.columns)]
    media = list(OrderedDict.fromkeys(v for v in values  # in order of appearance
                                      if v is not None and media_kind(v) != "audio"))
    root = Path(os.path.abspath(root))
    by_name = tuple((v, _found_as(v, root)) for v in media
                    if not os.path.lexists(root / os.path.normpath(v)))
    replays, video = (0, "") if config.media_time_column else replayed_rows(events, values)
    return RunStimuli(found, tuple(events.columns), tuple(media), by_name,
                      tuple(sorted({v for v in values if v and media_kind(v) == "audio"})),
                      replays, video)


def _found_as(value: str, root: Path) -> str:
    paths = name_index(root).get(Path(value).name, [])
    ending = [p for p in paths if p.endswith(os.path.normpath(value))]
    return (ending or paths or ["?"])[0]


def replayed_rows(events: pd.DataFrame, values) -> tuple[int, str]:
    """(number of rows, first video) of rows naming the same video as the row before them in
    time and starting within CONTIGUOUS seconds of its end: without a media time, each such
    row would show the video from its start again."""
    order = np.argsort(events["onset"].to_numpy(float), kind="stable")
    onsets = events["onset"].to_numpy(float)[order]
    ends = onsets + events["duration"].to_numpy(float)[order]
    names = [values[i] for i in order]
    hits = [j for j in range(1, len(names)) if names[j] is not None
            and names[j] == names[j - 1] and media_kind(names[j]) == "video"
            and onsets[j] <= ends[j - 1] + CONTIGUOUS]
    return len(hits), (names[hits[0]] if hits else "")


def log_stimuli(runs: list, config: StimulusConfig, root):
    """Log what :func:`inspect_run` found. runs: (unit label, events path, RunStimuli) of
    each run, in order."""
    units = OrderedDict()
    for unit, events, info in runs:
        units.setdefault(unit, []).append((events, info))
        if info.replays:
            times = [c for c in info.event_columns if "time" in c.lower()
                     and c not in ("onset", "duration")]
            LOGGER.warning(
                "%s: %d consecutive row(s) show the video '%s' again from its start (each row "
                "is shown from 0 s); if the rows log one playback (e.g. frame by frame), give "
                "--media-time-column with the column of the position in the video at each "
                "onset%s", events, info.replays, info.replayed,
                f" (e.g. {', '.join(times)})" if times else "")
    for unit, members in units.items():
        _log_unit(unit, members, config, root)
    audio = sorted({a for _, _, info in runs for a in info.audio})
    if audio:
        where = [str(events) for _, events, info in runs if info.audio]
        LOGGER.warning("%d audio file(s) named in the stimulus column are ignored (no stream "
                       "reads audio; images, video frames and texts are analysed), e.g. '%s' "
                       "in %s%s", len(audio), audio[0], where[0],
                       f" and {len(where) - 1} more run(s)" if len(where) > 1 else "")


def _log_unit(unit: str, members: list, config: StimulusConfig, root):
    described = OrderedDict()
    for _, info in members:
        described.setdefault(info.columns.describe(), []).append(info)
    parts = []
    for text, infos in described.items():
        count = f" in {len(infos)} of {len(members)} runs" if len(described) > 1 else ""
        media = {v for i in infos for v in i.media}
        by_name = dict(b for i in infos for b in i.by_name)
        found = (f", {len(by_name)} of them found by file name in {root} (e.g. "
                 f"'{next(iter(by_name))}' -> {next(iter(by_name.values()))})"
                 if by_name else "")
        audio = len({a for i in infos for a in i.audio})
        ignored = f", {audio} audio file(s) ignored" if audio else ""
        parts.append(f"{text}{count}: {len(media)} distinct image/video file(s){found}{ignored}"
                     if infos[0].columns.columns else f"{text}{count}")
    LOGGER.info("%s: %s", unit, "; ".join(parts))
    missing = [i for _, i in members if config.stim_columns and not i.columns.columns]
    if missing:
        LOGGER.warning("%s: none of the stimulus column(s) %s (--stim-column) is in its events "
                       "(columns: %s); no image or video from them", unit,
                       ", ".join(config.stim_columns), ", ".join(missing[0].event_columns))


def no_stimulus_hint(infos: list, config: StimulusConfig) -> str:
    """The part of the 'no stimulus' message that lists the event columns seen and the
    stimulus columns looked for. infos: the runs' RunStimuli."""
    seen = list(OrderedDict.fromkeys(c for i in infos for c in i.event_columns))
    looked = (f"--stim-column {' '.join(config.stim_columns)}" if config.stim_columns else
              f"a stimulus column ({', '.join(STIM_COLUMNS)}, or a column of media file names)")
    audio = len({a for i in infos for a in i.audio})
    return (f" (event columns: {', '.join(seen) or 'none'}; looked for {looked}"
            + (f"; {audio} audio file(s) ignored" if audio else "") + ")")
