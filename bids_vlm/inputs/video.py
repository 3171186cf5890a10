"""Video stimuli: frames at chosen times, decoded with PyAV (FFmpeg).

A video frame is a stimulus item written ``<path>#t=<seconds>`` (seconds zero-padded, so that
sorting items sorts each video's frames in time). :class:`FrameReader` decodes forward through a
file and returns, for each asked time, the last frame shown at or before it; asking for times in
increasing order decodes the file once, and only the frames returned are converted to RGB images
(the conversion costs about twice the decoding). :func:`canonical_items` maps the items of a
timeline to the frames they show (from the container's packet times, without decoding), so that
a frame shown at several sample times is decoded and run through a model once.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from bids_vlm.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ogv")
_SEP = "#t="


def frame_item(path, seconds: float) -> str:
    """The item naming the frame of ``path`` shown at ``seconds``."""
    return f"{path}{_SEP}{seconds:012.4f}"


def is_frame_item(item: str) -> bool:
    return _SEP in item


def split_frame_item(item: str) -> tuple[str, float]:
    path, seconds = item.rsplit(_SEP, 1)
    return path, float(seconds)


def duration(path) -> float:
    """Length of a video in seconds."""
    import av  # PyAV: only for movie stimuli

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / 1e6
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(f"cannot read the video: {exc}", path) from exc


@functools.lru_cache(maxsize=64)
def _frame_times(path: str, size: int, mtime: int) -> np.ndarray:
    import av  # PyAV: only for movie stimuli

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.pts is not None]
            base = float(stream.time_base)
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(f"cannot read the video: {exc}", path) from exc
    return np.unique(np.asarray(pts, dtype=np.int64)) * base


def frame_times(path) -> np.ndarray:
    """(n_frames,) sorted presentation times in seconds of a video's frames, read from its
    packets (no decoding; a few ms for a 10-minute film)."""
    stat = os.stat(path)
    return _frame_times(str(path), stat.st_size, stat.st_mtime_ns)


def canonical_items(items) -> list:
    """Each item with a frame time replaced by the time of the frame it shows (the last frame at
    or before it, else the first; rounded up to the item's 0.1 ms resolution so that it still
    selects that frame), so that items showing the same frame become equal. Other items and
    videos that cannot be read are returned unchanged (the reader reports them)."""
    out = []
    for item in items:
        if item is None or not is_frame_item(item):
            out.append(item)
            continue
        path, seconds = split_frame_item(item)
        try:
            times = frame_times(path)
        except (DataError, OSError):
            out.append(item)
            continue
        if not len(times):
            out.append(item)
            continue
        shown = times[max(int(np.searchsorted(times, seconds + 1e-6, side="right")) - 1, 0)]
        out.append(frame_item(path, math.ceil(max(shown, 0.0) * 1e4 - 1e-6) / 1e4))
    return out


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path) -> str:
    """SHA-256 of a file, computed once per (path, size, mtime)."""
    stat = os.stat(path)
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


class FrameReader:
    """Frames of one video by time, decoding forward (reopened when asked to go back)."""

    def __init__(self, path):
        self.path = str(path)
        self._container = None
        self._frames = None
        self._current = None  # [time, av frame, its RGB image once converted]
        self._next = None

    def _open(self):
        import av  # PyAV: only for movie stimuli

        self.close()
        try:
            self._container = av.open(self.path)
            self._frames = self._container.decode(video=0)
        except (av.error.FFmpegError, IndexError, OSError) as exc:
            raise DataError(f"cannot read the video: {exc}", self.path) from exc
        self._current, self._next = None, self._decode()

    def _decode(self):
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        return [float(frame.time or 0.0), frame, None]

    def frame_at(self, seconds: float) -> Image.Image:
        if self._container is None or (self._current and seconds < self._current[0]):
            self._open()
        while self._next is not None and self._next[0] <= seconds + 1e-6:
            self._current, self._next = self._next, self._decode()
        if self._current is None:  # before the first frame: show the first one
            self._current = self._next
        if self._current is None:
            raise DataError(f"the video has no frame at {seconds:.3f} s", self.path)
        if self._current[2] is None:
            self._current[2] = self._current[1].to_image()
        return self._current[2]

    def close(self):
        if self._container is not None:
            self._container.close()
        self._container = None


class FrameSource:
    """Opens one :class:`FrameReader` per video and reuses it across batches."""

    def __init__(self):
        self._readers = {}

    def image(self, item: str) -> Image.Image:
        path, seconds = split_frame_item(item)
        if path not in self._readers:
            if not Path(path).is_file():
                raise DataError("video file not found", path)
            self._readers[path] = FrameReader(path)
        image = self._readers[path].frame_at(seconds)
        return image if image.mode == "RGB" else image.convert("RGB")

    def close(self):
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
