"""Which events column names the stimulus files, and where each named file is.

Used by stage 2 (:mod:`bids_vlm.inputs.stimuli`, the timeline) and by stage 1 (:mod:`bids_vlm.inputs.bids`,
whose run fingerprint covers the resolved stimulus files), so it imports neither.

*Column.* ``--stim-column`` names one or more columns; in each row the first non-empty value
wins. Without it the first of :data:`STIM_COLUMNS` that the events have is used (names compared
without case, ``_``, ``-`` or spaces; a column other than ``stim_file`` only when one of its
values is a media file name), else the first column all of whose values are media file names.

*File.* A value is a path relative to the stimuli folder (``--stimuli-dir``, default
``<bids_dir>/stimuli``). When nothing is there, its file name is looked up in the folder's
tree (BOLD5000 names ``n01930112_19568.JPEG`` while the file is in ``ImageNet/``), through an
index of the tree built once per process (:func:`name_index`); a name found twice is an error
naming both. Every file must stay inside the folder: absolute values, ``..`` and symbolic
links that lead out of it are refused, except links into the git-annex store of a DataLad
dataset that holds it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bids_vlm.inputs.datalad import annex_target, check_present
from bids_vlm.errors import DataError
from bids_vlm.inputs.video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".m4a", ".aac", ".aif", ".aiff",
                    ".opus", ".wma")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
# usual names of a stimulus column, in the order they are tried (see the module doc)
STIM_COLUMNS = ("stim_file", "stimulus_file", "stim_path", "stimulus_path", "file_path",
                "filepath", "file_name", "filename", "stimulus", "stim", "stim_name",
                "stimulus_name", "image", "image_file", "image_name", "img", "img_name",
                "picture", "movie", "movie_file", "video", "video_file", "clip", "media")


def media_kind(value: str) -> str | None:
    """'image', 'video' or 'audio' by the file extension of ``value``; None for another."""
    suffix = Path(value).suffix.lower()
    for kind, exts in (("image", IMAGE_EXTENSIONS), ("video", VIDEO_EXTENSIONS),
                       ("audio", AUDIO_EXTENSIONS)):
        if suffix in exts:
            return kind
    return None


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name).lower())


def _cells(values) -> list:
    """Stripped non-empty strings of a column (NaN, '' and blanks dropped)."""
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


@dataclass(frozen=True)
class StimulusColumns:
    """The columns a run's stimulus files come from.

    columns: the columns used, in order (the first non-empty value of a row wins); how:
    'named' (``--stim-column``), 'detected' (a usual name), 'content' (all values are media
    file names) or '' (none); missing: the named columns that the events lack.
    """

    columns: tuple = ()
    how: str = ""
    missing: tuple = ()

    def describe(self) -> str:
        if not self.columns:
            return "no stimulus column"
        names = ", ".join(f"'{c}'" for c in self.columns)
        how = {"named": "--stim-column", "detected": "detected by its name",
               "content": "detected: its values are media file names"}[self.how]
        return f"stimulus column {names} ({how})"


def stimulus_columns(events: pd.DataFrame, names=()) -> StimulusColumns:
    """The stimulus column(s) of ``events`` (see the module doc); ``names``: --stim-column."""
    if names:
        present = tuple(c for c in names if c in events.columns)
        return StimulusColumns(present, "named" if present else "",
                               tuple(c for c in names if c not in events.columns))
    by_key = {}
    for col in events.columns:
        by_key.setdefault(_key(col), col)
    for usual in STIM_COLUMNS:
        col = by_key.get(_key(usual))
        if col is not None and (col == "stim_file" or any(
                media_kind(v) for v in _cells(events[col]))):
            return StimulusColumns((col,), "detected")
    for col in events.columns.drop(["onset", "duration"], errors="ignore"):
        cells = _cells(events[col])
        if cells and all(media_kind(v) for v in cells):
            return StimulusColumns((col,), "content")
    return StimulusColumns()


def row_values(events: pd.DataFrame, columns) -> list:
    """Per row, (value, column) of the first column with a non-empty value; (None, None)."""
    out = [(None, None)] * len(events)
    for col in reversed(tuple(columns)):  # earlier columns overwrite later ones
        for row, value in enumerate(events[col]):
            if isinstance(value, str) and value.strip():
                out[row] = (value.strip(), col)
    return out


# ------------------------------------------------------------------------ the name index

_INDEXES: dict = {}  # (root, root's mtime) -> {file name: [paths relative to root]}


def _build_index(root: Path) -> dict:
    """{file name: sorted relative paths} of the media files in ``root``'s tree (hidden folders
    such as .git and folders reached through symbolic links are not walked)."""
    index = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        for name in files:
            if media_kind(name):
                index.setdefault(name, []).append(os.path.normpath(os.path.join(rel, name)))
    return {k: sorted(v) for k, v in index.items()}


def name_index(root, refresh: bool = False) -> dict:
    """The file-name index of the stimuli folder ``root``, built once per process (again when
    the folder's modification time changes, or with ``refresh``)."""
    root = Path(os.path.abspath(root))
    try:
        key = (str(root), root.stat().st_mtime_ns)
    except OSError:
        return {}
    if refresh or key not in _INDEXES:
        for old in [k for k in _INDEXES if k[0] == key[0]]:
            del _INDEXES[old]
        _INDEXES[key] = _build_index(root)
    return _INDEXES[key]


def _by_name(value: str, root: Path, name: str, source) -> Path | None:
    """The file of ``root``'s tree that ``value`` names by its file name (a candidate whose
    path ends with all of ``value`` first); DataError when two are equally good."""
    candidates = name_index(root).get(Path(value).name, [])
    if any(not os.path.lexists(root / c) for c in candidates):  # stale: the tree changed
        candidates = name_index(root, refresh=True).get(Path(value).name, [])
    parts = Path(os.path.normpath(value)).parts
    ending = [c for c in candidates if Path(c).parts[-len(parts):] == parts]
    found = ending or candidates
    if len(found) > 1:
        raise DataError(f"{name} is not found as {root / value}, and its file name is "
                        f"ambiguous in the stimuli folder: {root / found[0]} and "
                        f"{root / found[1]}" + (f" (and {len(found) - 2} more)"
                                                if len(found) > 2 else "")
                        + "; name it by its path relative to the folder", source)
    return root / found[0] if found else None


# ------------------------------------------------------------------------ resolution

def resolve_stimulus(value: str, root, where: str, source, column: str = "stim_file") -> str:
    """The absolute path of the stimulus file ``value`` (of events column ``column``) names
    under the stimuli folder ``root``, found by its relative path or else by its file name in
    the folder's tree; DataError naming ``source`` and ``where`` (its line) when the value is
    absolute, leads out of ``root`` (``..``, or a symbolic link to a file elsewhere), is not an
    image, video or audio file, is missing, ambiguous, or not a regular file (a directory, a
    FIFO).

    A symbolic link is followed when its target stays inside ``root`` or in the git-annex
    object store of a dataset that holds ``root`` (DataLad / OpenNeuro copies store every
    file there), so the returned path is the link's own, keeping its file extension."""
    root = Path(os.path.abspath(root or "."))
    name = f"{column} '{value}' on {where}"
    if Path(value).is_absolute() or os.path.normpath(value).split(os.sep)[0] == "..":
        raise DataError(f"{name} is outside the stimuli folder {root}: stimuli are named "
                        "relative to it, and nothing outside it is read", source)
    if media_kind(value) is None:
        raise DataError(f"{column} '{value}' is neither an image "
                        f"({', '.join(IMAGE_EXTENSIONS)}) nor a video "
                        f"({', '.join(VIDEO_EXTENSIONS)}); audio files "
                        f"({', '.join(AUDIO_EXTENSIONS)}) are ignored", source)
    path = root / os.path.normpath(value)
    if not os.path.lexists(path):
        path = _by_name(value, root, name, source) or path
    if not path.exists() and annex_target(path):  # a DataLad file not fetched: exit 66
        repo = next((d for d in (root, *root.parents) if (d / ".git").exists()), root)
        check_present(path, repo)
    if not path.exists():
        raise DataError(f"{column} '{value}' not found under {root} (neither as a path "
                        "relative to it nor by its file name in its tree; --stimuli-dir names "
                        "another folder)", source)
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


def stimulus_files(events_path, root, names=()) -> list[str]:
    """The image and video files an events.tsv names (absolute, sorted, each once), resolved
    as the timeline resolves them (for the fingerprint of a run's inputs); values that do not
    resolve, audio files and unreadable events are left out (the runner's checks report
    them)."""
    try:
        events = pd.read_csv(events_path, sep="\t", dtype=str, na_values=["n/a", "N/A", ""],
                             keep_default_na=False, encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError):
        return []
    found = set()
    seen = set()
    for value, column in row_values(events, stimulus_columns(events, names).columns):
        if value is None or value in seen or media_kind(value) == "audio":
            continue
        seen.add(value)
        try:
            found.add(resolve_stimulus(value, root, "", events_path, column))
        except DataError:
            continue
    return sorted(found)
