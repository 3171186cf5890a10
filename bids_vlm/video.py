"""Video stimuli: frames at chosen times, decoded with PyAV (FFmpeg).

A video frame is a stimulus item written ``<path>#t=<seconds>`` (seconds zero-padded, so that
sorting items sorts each video's frames in time). :class:`FrameReader` decodes forward through a
file and returns, for each asked time, the last frame shown at or before it; asking for times in
increasing order decodes the file once.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

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
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / 1e6
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(f"cannot read the video: {exc}", path) from exc


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
        self._current = None  # (time, PIL image) of the last decoded frame
        self._next = None

    def _open(self):
        import av

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
        return float(frame.time or 0.0), frame.to_image()

    def frame_at(self, seconds: float) -> Image.Image:
        if self._container is None or (self._current and seconds < self._current[0]):
            self._open()
        while self._next is not None and self._next[0] <= seconds + 1e-6:
            self._current, self._next = self._next, self._decode()
        if self._current is None:  # before the first frame: show the first one
            self._current = self._next
        if self._current is None:
            raise DataError(f"the video has no frame at {seconds:.3f} s", self.path)
        return self._current[1]

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
        return self._readers[path].frame_at(seconds).convert("RGB")

    def close(self):
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
