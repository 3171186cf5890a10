"""Stage 2: from events.tsv to a stimulus timeline sampled at the stimulus rate (METHOD.md 2).

Sample ``k`` of a run covers ``[k/rate, (k+1)/rate)`` seconds. Its stimulus is the event that
covers the largest part of that interval (so events shorter than a sample are never missed);
for a video, the frame on screen at the sample's midpoint (decoded at the stimulus rate);
a sample that no event overlaps is *blank* and later gets zero activation. Images come from
``stim_file`` (relative to the dataset's ``stimuli/`` folder); text from a text column or from a
prompt template filled with the row's columns, e.g. ``"a photo of a {trial_type}"``. With a
``text_window`` (seconds), a sample's text is instead every text (e.g. the words of a
word-level transcript) whose onset lies in the window that ends with the sample.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_vlm.config import StimulusConfig
from bids_vlm.errors import DataError
from bids_vlm.video import VIDEO_EXTENSIONS, frame_item

LOGGER = logging.getLogger("bids_vlm.stimuli")
TEXT_COLUMNS = ("text", "caption", "sentence", "word")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    that start after the run's end are left out (the runner warns about them once)."""
    dt = 1.0 / config.stim_rate
    n_samples = int(math.ceil(run_duration / dt - 1e-9))
    times = np.arange(n_samples) * dt
    owner = _owner_event(events["onset"].to_numpy(float), events["duration"].to_numpy(float),
                         n_samples, dt)
    images = _event_images(events, stimuli_dir, source)
    texts = _event_texts(events, config, source)
    onsets = events["onset"].to_numpy(float)
    if config.text_window > 0:
        sample_texts = _windowed_texts(texts, onsets, times + dt, config.text_window)
    else:
        sample_texts = tuple(texts[i] if i >= 0 else None for i in owner)
    return Timeline(times=times, dt=dt,
                    images=tuple(_sample_image(images, i, times[k] + dt / 2 - onsets[i])
                                 if i >= 0 else None for k, i in enumerate(owner)),
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
    sample's midpoint (``offset`` seconds after the event's onset)."""
    if images[event] is None:
        return None
    path = images[event]
    if Path(path).suffix.lower() in VIDEO_EXTENSIONS:
        return frame_item(path, max(offset, 0.0))
    return path


def _owner_event(onsets, durations, n_samples, dt):
    """(n_samples,) index of the event covering most of each sample, -1 where none does."""
    best = np.zeros(n_samples)
    owner = np.full(n_samples, -1)
    for i, (on, dur) in enumerate(zip(onsets, durations)):
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


def _event_images(events, stimuli_dir, source):
    if "stim_file" not in events.columns:
        return [None] * len(events)
    out = []
    for row, value in enumerate(events["stim_file"]):
        if not isinstance(value, str) or not value.strip():
            out.append(None)
            continue
        out.append(resolve_stimulus(value.strip(), stimuli_dir, f"line {row + 2}", source))
    return out


def resolve_stimulus(value: str, root, where: str, source) -> str:
    """The absolute path of the stimulus file ``value`` names under the stimuli folder
    ``root``; DataError naming ``source`` and ``where`` (its line) when the value is absolute,
    leads out of ``root`` (``..``, or a symbolic link to a file elsewhere), is not an image or
    video, is missing, or is not a regular file (a directory, a FIFO).

    A symbolic link is followed when its target stays inside ``root`` or in the git-annex
    object store of a dataset that holds ``root`` (DataLad / OpenNeuro copies store every
    file there), so the returned path is the link's own, keeping its file extension."""
    root = Path(os.path.abspath(root or "."))
    name = f"stim_file '{value}' on {where}"
    if Path(value).is_absolute() or os.path.normpath(value).split(os.sep)[0] == "..":
        raise DataError(f"{name} is outside the stimuli folder {root}: stimuli are named "
                        "relative to it, and nothing outside it is read", source)
    path = root / os.path.normpath(value)
    if path.suffix.lower() not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        raise DataError(f"stim_file '{value}' is neither an image "
                        f"({', '.join(IMAGE_EXTENSIONS)}) nor a video "
                        f"({', '.join(VIDEO_EXTENSIONS)})", source)
    if not path.exists():
        raise DataError(f"stim_file '{value}' not found under {root}", source)
    target = path.resolve()
    if not _inside(target, root.resolve()) and not _in_annex(target, root):
        raise DataError(f"{name} is a symbolic link to {target}, outside the stimuli folder "
                        f"{root}; nothing outside it is read (copy the file into it)", source)
    if target.is_dir():
        raise DataError(f"{name} is a directory, not an image or video file", source)
    if not target.is_file():
        raise DataError(f"{name} is not a regular file (a FIFO, socket or device?)", source)
    return str(path)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _in_annex(target: Path, root: Path) -> bool:
    """Whether ``target`` is in the git-annex object store of the repository that holds
    ``root`` (the nearest folder with a ``.git``, and only it), reached without a symbolic
    link (a store that is itself a link could point anywhere)."""
    repo = next((d for d in (root, *root.parents) if (d / ".git").exists()), None)
    if repo is None:
        return False
    store = repo.resolve() / ".git" / "annex" / "objects"
    return (repo / ".git" / "annex" / "objects").resolve() == store and store.is_dir() \
        and _inside(target, store)


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
