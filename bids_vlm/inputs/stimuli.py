"""Stage 2: from events.tsv to a stimulus timeline sampled at the stimulus rate (docs/METHOD.md 2).

Sample ``k`` of a run covers ``[k/rate, (k+1)/rate)`` seconds. Its stimulus is the event that
covers the largest part of that interval (so events shorter than a sample are never missed);
for a video, the frame on screen at the sample's midpoint (decoded at the stimulus rate);
a sample that no event overlaps is *blank* and later gets zero activation. Images and videos
come from the stimulus column (``stim_file``, another usual name or ``--stim-column``), found in
the stimuli folder (:mod:`bids_vlm.inputs.stimulus_files`); with a media time column, a video is shown
from the time it gives at each onset. Text comes from a text column or from a
prompt template filled with the row's columns, e.g. ``"a photo of a {trial_type}"``. With a
``text_window`` (seconds), a sample's text is instead every text (e.g. the words of a
word-level transcript) whose onset lies in the window that ends with the sample.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_vlm.config import StimulusConfig
from bids_vlm.errors import DataError
from bids_vlm.inputs.stimulus_files import (
    media_kind,
    resolve_stimulus,
    row_values,
    stimulus_columns,
)
from bids_vlm.inputs.video import canonical_items, frame_item

LOGGER = logging.getLogger("bids_vlm.inputs.stimuli")
TEXT_COLUMNS = ("text", "caption", "sentence", "word")


@dataclass(frozen=True)
class Timeline:
    """Stimuli of one run on the sample grid.

    times: (n_samples,) sample start times in seconds; images, texts: n_samples entries each,
    an absolute image path / a text, or ``None`` when that modality is blank in the sample.
    """

    times: np.ndarray
    dt: float
    images: tuple
    texts: tuple

    def to_dict(self) -> dict:
        return {"times": self.times.tolist(), "dt": self.dt,
                "images": list(self.images), "texts": list(self.texts)}

    @classmethod
    def from_dict(cls, data: dict) -> "Timeline":
        return cls(np.asarray(data["times"], float), float(data["dt"]),
                   tuple(data["images"]), tuple(data["texts"]))


def read_events(path) -> pd.DataFrame:
    """Read an events.tsv, checking the columns BIDS requires.

    ``onset`` and ``duration`` become floats; every other column stays text (so a ``word`` of
    digits or a numeric ``trial_type`` keeps its spelling), with ``n/a`` read as missing.
    """
    try:
        events = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", "N/A", ""],
                             keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"events file is not UTF-8 text: {exc}", path) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"malformed TSV: {exc}", path) from exc
    for col in ("onset", "duration"):
        if col not in events.columns:
            raise DataError(f"required column '{col}' is missing (columns: "
                            f"{', '.join(events.columns)})", path)
        values = pd.to_numeric(events[col], errors="coerce")
        bad = values.isna() & events[col].notna()
        if bad.any() or (col == "onset" and values.isna().any()):
            row = int(np.flatnonzero(bad | values.isna())[0]) + 2
            value = events[col].iloc[row - 2]
            raise DataError(f"column '{col}' must be numeric; line {row} is "
                            f"'{value}'" if isinstance(value, str) else
                            f"column '{col}' is missing (n/a or empty) on line {row}", path)
        if np.isinf(values).any():
            row = int(np.flatnonzero(np.isinf(values))[0]) + 2
            raise DataError(f"column '{col}' must be a finite number of seconds; line {row} "
                            f"is '{events[col].iloc[row - 2]}'", path)
        events[col] = values.fillna(0.0)
    for col in ("onset", "duration"):
        if (events[col] < 0).any():
            row = int(np.flatnonzero(events[col] < 0)[0]) + 2
            raise DataError(f"negative {col} on line {row}", path)
    _check_text_cells(events, path)
    return events


def exclude_events(events: pd.DataFrame, config: StimulusConfig, path) -> pd.DataFrame:
    """The events without the rows whose ``trial_type`` is one of
    ``config.exclude_trial_types`` (``--exclude-trial-types``, e.g. catch trials), in order;
    DataError naming the file when it has no trial_type column."""
    if not config.exclude_trial_types:
        return events
    if "trial_type" not in events.columns:
        raise DataError("--exclude-trial-types needs a trial_type column (columns: "
                        f"{', '.join(events.columns)})", path)
    return events[~events["trial_type"].isin(config.exclude_trial_types)].reset_index(drop=True)


def _check_text_cells(events: pd.DataFrame, path):
    """DataError naming the line and column of a cell holding a NUL or another control
    character (not tab or newline): no stimulus text has one, and tokenizers, JSON node
    inputs and HDF5 strings would choke on it or drop what follows."""
    for col in events.columns.drop(["onset", "duration"]):
        values = events[col]
        bad = values.str.contains(_CONTROL, regex=True, na=False)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            char = re.search(_CONTROL, values.iloc[row]).group()
            raise DataError(f"column '{col}' on line {row + 2} holds the control character "
                            f"{char!r} (a NUL byte or binary data in a text file?)", path)


_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


def build_timeline(events: pd.DataFrame, run_duration: float, config: StimulusConfig,
                   stimuli_dir=None, source="events.tsv") -> Timeline:
    """Sample the events of one run (``run_duration`` seconds) at ``config.stim_rate``; events
    that start after the run's end are left out (the runner warns about them once).

    Stimulus files are looked up in ``config.stimuli_dir`` when set (``--stimuli-dir``), else
    in ``stimuli_dir`` (the dataset's ``stimuli/``): :mod:`bids_vlm.inputs.stimulus_files`. A video
    sample shows the frame at ``media time of its event + (sample midpoint - onset)``
    (:func:`media_times`). Rows of ``config.exclude_trial_types`` are left out first
    (:func:`exclude_events`)."""
    events = exclude_events(events, config, source)
    dt = 1.0 / config.stim_rate
    n_samples = int(math.ceil(run_duration / dt - 1e-9))
    times = np.arange(n_samples) * dt
    images = _event_images(events, config, config.stimuli_dir or stimuli_dir, source)
    starts = media_times(events, config, images, source)
    texts = _event_texts(events, config, source)
    # a row showing only an (ignored) audio file, e.g. a story's .wav spanning the run beside
    # its word events, takes no sample from them
    audio_only = [t is None and media_kind(v or "") == "audio" for t, (v, _) in zip(
        texts, row_values(events, stimulus_columns(events, config.stim_columns).columns))]
    owner = _owner_event(events["onset"].to_numpy(float), events["duration"].to_numpy(float),
                         n_samples, dt, skip=audio_only)
    onsets = events["onset"].to_numpy(float)
    if config.text_window > 0:
        sample_texts = _windowed_texts(texts, onsets, times + dt, config.text_window)
    else:
        sample_texts = tuple(texts[i] if i >= 0 else None for i in owner)
    # a video frame shown at several samples (a film slower than the stimulus rate) becomes
    # one item, decoded and run through the models once
    return Timeline(times=times, dt=dt,
                    images=tuple(canonical_items(
                        _sample_image(images, i, starts[i] + times[k] + dt / 2 - onsets[i])
                        if i >= 0 else None for k, i in enumerate(owner))),
                    texts=sample_texts)


def _windowed_texts(texts, onsets, ends, window):
    """For each sample ending at ``ends[k]``, the texts (e.g. words of a transcript) with an
    onset in ``[ends[k] - window, ends[k])``, in order, joined by spaces; None when none."""
    order = [i for i in np.argsort(onsets, kind="stable") if texts[i] is not None]
    on = onsets[order]
    out = []
    for end in ends:
        first, last = np.searchsorted(on, end - window, "left"), np.searchsorted(on, end, "left")
        words = [texts[order[j]] for j in range(first, last)]
        out.append(" ".join(words) if words else None)
    return tuple(out)


def _sample_image(images, event, offset):
    """The image of a sample: the event's image, or for a video the frame on screen at the
    sample's midpoint (``offset`` seconds into the video)."""
    if images[event] is None:
        return None
    path = images[event]
    if media_kind(path) == "video":
        return frame_item(path, max(offset, 0.0))
    return path


def _owner_event(onsets, durations, n_samples, dt, skip=None):
    """(n_samples,) index of the event covering most of each sample, -1 where none does;
    events where ``skip`` (n_events booleans) is true own none."""
    best = np.zeros(n_samples)
    owner = np.full(n_samples, -1)
    for i, (on, dur) in enumerate(zip(onsets, durations)):
        if skip is not None and skip[i]:
            continue
        off = on + max(dur, 0.0)
        first = int(math.floor(on / dt + 1e-9))  # 0.3 / 0.1 is 2.999...: not sample 2
        last = min(int(math.ceil(off / dt - 1e-9)), n_samples)
        if dur <= 0:  # an instantaneous event shows in the sample it falls in
            last = min(first + 1, n_samples)
        for k in range(first, last):
            cover = min(off, (k + 1) * dt) - max(on, k * dt) if dur > 0 else 2e-9 * dt
            if cover > best[k] and cover > 1e-9 * dt:
                best[k], owner[k] = cover, i
    return owner


def _event_images(events, config: StimulusConfig, root, source) -> list:
    """Per row, the absolute path of its image or video (None: no value, or an audio file,
    which no stream reads; :mod:`bids_vlm.inputs.stimulus_checks` warns about those once)."""
    found = stimulus_columns(events, config.stim_columns)
    resolved = {}
    out = []
    for row, (value, column) in enumerate(row_values(events, found.columns)):
        if value is None or media_kind(value) == "audio":
            out.append(None)
            continue
        if value not in resolved:  # a frame-by-frame log names one film on every row
            resolved[value] = resolve_stimulus(value, root, f"line {row + 2}", source, column)
        out.append(resolved[value])
    return out


def media_times(events, config: StimulusConfig, images, source) -> np.ndarray:
    """(n_events,) seconds into its video at each event's onset: the ``media_time_column``
    (e.g. studyforrest's ``videotime``; n/a -> 0), or 0 without one. DataError naming the
    file when the column is missing while the run shows a video, or a value is not a
    finite number of seconds >= 0."""
    column = config.media_time_column
    starts = np.zeros(len(events))
    if not column:
        return starts
    has_video = any(p is not None and media_kind(p) == "video" for p in images)
    if column not in events.columns:
        if has_video:
            raise DataError(f"media time column '{column}' (--media-time-column) is not in the "
                            f"events file (columns: {', '.join(events.columns)})", source)
        return starts
    values = pd.to_numeric(events[column], errors="coerce").to_numpy(float)
    bad = (np.isnan(values) & events[column].notna().to_numpy()) | np.isinf(values) \
        | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"media time column '{column}' must hold seconds >= 0; line {row + 2} "
                        f"is '{events[column].iloc[row]}'", source)
    return np.nan_to_num(values, nan=0.0)


def _event_texts(events, config: StimulusConfig, source):
    column = config.text_column
    if column:
        if column not in events.columns:
            raise DataError(f"text column '{column}' is not in the events file", source)
    else:
        column = next((c for c in TEXT_COLUMNS if c in events.columns), "")
    if column:
        return [str(v).strip() or None if not pd.isna(v) else None for v in events[column]]
    if config.text_template:
        return [_fill(config.text_template, row, source) for _, row in events.iterrows()]
    return [None] * len(events)


def _fill(template, row, source):
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    if any(f not in row.index for f in fields):
        missing = [f for f in fields if f not in row.index]
        raise DataError(f"text template '{template}' needs column(s) {missing}", source)
    if any(not isinstance(row[f], str) and pd.isna(row[f]) for f in fields):
        return None
    return template.format(**{f: row[f] for f in fields})


def unique_stimuli(timelines) -> tuple[list, list]:
    """Sorted unique image paths and texts over several timelines."""
    return unique_items(timelines, "image"), unique_items(timelines, "text")


PAIR_PREFIX = "pair:"


def pair_item(image, text):
    """The item a cross-modal stream sees in a sample: its image and its concurrent text, as one
    string (``pair:["<image>", "<text>"]``, a side ``null`` when blank); None when both are."""
    if image is None and text is None:
        return None
    return PAIR_PREFIX + json.dumps([image, text], ensure_ascii=False)


def split_pair_item(item) -> tuple:
    """(image or None, text or None) of a :func:`pair_item`."""
    if not item.startswith(PAIR_PREFIX):
        raise ValueError(f"not a pair item: {item[:60]!r}")
    image, text = json.loads(item[len(PAIR_PREFIX):])
    return image, text


def sample_items(timeline: Timeline, stream: str) -> tuple:
    """Per-sample items of ``stream``: images, texts, or (``cross-*`` streams) pairs."""
    if stream == "image":
        return timeline.images
    if stream == "text":
        return timeline.texts
    return tuple(pair_item(i, t) for i, t in zip(timeline.images, timeline.texts))


def unique_items(timelines, stream: str) -> list:
    """Sorted unique non-blank items of ``stream`` over several timelines."""
    return sorted({x for t in timelines for x in sample_items(t, stream) if x is not None})


def run_signature(timeline: dict, n_scans: int, tr: float) -> str:
    """Signature of a run's stimulus sequence: equal for runs (of any subject) that showed the
    same stimuli at the same times with the same number of scans and TR.

    timeline: the run's :meth:`bids_vlm.inputs.stimuli.Timeline.to_dict`.
    """
    return hashlib.sha1(json.dumps([timeline, n_scans, tr]).encode()).hexdigest()
