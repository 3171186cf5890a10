"""What each run's timeline shows (issue 14: the check that would have caught a frame-by-frame
movie log replaying its first half second, or a task whose stimulus column was not found).

Per run: samples with a still image, a video frame, a text, and blank ones; distinct images,
videos and texts; per video the media time range its frames cover. It is logged (INFO), kept
in the outputs' sidecars (``StimulusTimeline``) and shown in the report. Warnings: a run whose
samples are all blank, and a video whose frames cover under half of the time it is on screen.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bids_vlm.inputs.video import is_frame_item, split_frame_item

LOGGER = logging.getLogger("bids_vlm.inputs.stimuli")
MIN_COVERAGE = 0.5  # media time covered / time on screen below which a video is warned about


def summarise(timeline) -> dict:
    """The counts of one run's :class:`~bids_vlm.inputs.stimuli.Timeline` (module doc): samples,
    dt (seconds per sample), image, video_frame, text, blank, distinct_images, distinct_videos, distinct_texts, and
    video_time {video file name: [first, last] media seconds shown, seconds on screen}."""
    images, texts = timeline.images, timeline.texts
    still = [i for i in images if i is not None and not is_frame_item(i)]
    videos: dict = {}
    for item in images:
        if item is not None and is_frame_item(item):
            path, seconds = split_frame_item(item)
            videos.setdefault(Path(path).name, []).append(seconds)
    dt = float(timeline.dt)
    return {"samples": len(images), "dt": dt, "image": len(still),
            "video_frame": sum(len(v) for v in videos.values()),
            "text": sum(t is not None for t in texts),
            "blank": sum(i is None and t is None for i, t in zip(images, texts)),
            "distinct_images": len(set(still)), "distinct_videos": len(videos),
            "distinct_texts": len({t for t in texts if t is not None}),
            "video_time": {name: [round(min(s), 3), round(max(s), 3), round(len(s) * dt, 3)]
                           for name, s in videos.items()}}


def describe(summary: dict) -> str:
    """One line of a run's summary."""
    text = (f"{summary['samples']} samples: {summary['image']} image, "
            f"{summary['video_frame']} video frame, {summary['text']} text, "
            f"{summary['blank']} blank; {summary['distinct_images']} distinct image(s), "
            f"{summary['distinct_videos']} video(s), {summary['distinct_texts']} distinct "
            "text(s)")
    videos = [f"{name} {first:g}-{last:g} s" for name, (first, last, _)
              in summary["video_time"].items()]
    return text + (f" (media time shown: {', '.join(videos)})" if videos else "")


def log_summary(label: str, events, summary: dict) -> None:
    """Log a run's summary (INFO) and warn when it is all blank or a video's frames cover
    under MIN_COVERAGE of its time on screen."""
    LOGGER.info("%s: %s", label, describe(summary))
    if summary["samples"] and summary["blank"] == summary["samples"]:
        LOGGER.warning("%s: every sample of the run is blank (no image, video frame or text "
                       "from its events)", events)
    for name, (first, last, shown) in summary["video_time"].items():
        covered = last - first + summary["dt"]
        if shown > 0 and covered < MIN_COVERAGE * shown:
            LOGGER.warning("%s: the frames of '%s' cover %.2f s of the video while it is on "
                           "screen for %.1f s (rows each replaying its start? see "
                           "--media-time-column)", events, name, covered, shown)
