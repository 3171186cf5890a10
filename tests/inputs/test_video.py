"""Video stimuli: a video the test writes (coloured segments) gives the expected frames at the
stimulus rate, through the timeline, the frame reader and the model."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from bids_vlm.config import ModelConfig, StimulusConfig
from bids_vlm.errors import DataError
from bids_vlm.models import extract, load_model
from bids_vlm.models.cache import stimulus_key
from bids_vlm.inputs.stimuli import build_timeline
from bids_vlm.inputs.video import (FrameReader, canonical_items, duration, frame_item, frame_times,
                            split_frame_item)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # 1 s each


def write_video(path, fps=10, seconds_per_colour=1.0, size=(64, 48)):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for colour in COLOURS:
            for _ in range(int(fps * seconds_per_colour)):
                frame = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def _dominant(image):
    return int(np.argmax(np.asarray(image, float).reshape(-1, 3).mean(0)))


def test_frames_at_times(video):
    assert duration(video) == pytest.approx(3.0, abs=0.15)
    reader = FrameReader(video)
    for seconds, channel in [(0.05, 0), (0.5, 0), (1.5, 1), (2.5, 2), (2.95, 2)]:
        assert _dominant(reader.frame_at(seconds)) == channel, seconds
    assert _dominant(reader.frame_at(0.4)) == 0  # going back reopens the file
    reader.close()


def test_timeline_samples_video_frames_at_the_stimulus_rate(video):
    events = pd.DataFrame({"onset": [2.0], "duration": [3.0], "stim_file": [video.name]})
    tl = build_timeline(events, 8.0, StimulusConfig(stim_rate=1.0), video.parent)
    assert tl.images[:2] == (None, None) and tl.images[5:] == (None, None, None)
    frames = [split_frame_item(item) for item in tl.images[2:5]]
    assert [p for p, _ in frames] == [str(video.resolve())] * 3
    assert [t for _, t in frames] == pytest.approx([0.5, 1.5, 2.5])  # sample midpoints
    fast = build_timeline(events, 8.0, StimulusConfig(stim_rate=2.0), video.parent)
    assert sum(i is not None for i in fast.images) == 6


def test_model_sees_the_frames(video):
    model = load_model("tiny-clip", ModelConfig())
    items = [frame_item(video, t) for t in (0.5, 0.7, 1.5, 2.5)]
    acts = extract(model, {"image": items}, ModelConfig(layers=(3,)), progress=False)["image/03"]
    assert np.allclose(acts[0], acts[1], atol=1e-4)  # same colour segment, same ANs
    assert not np.allclose(acts[0], acts[2], atol=1e-3) and not np.allclose(acts[2], acts[3])
    assert stimulus_key("image", items[0]) != stimulus_key("image", items[1])


def test_unreadable_video_is_a_data_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="cannot read the video"):
        duration(bad)
    with pytest.raises(DataError, match="broken.mp4"):
        FrameReader(bad).frame_at(0.0)


def _grey_film(path, rate, n_frames=40, size=(32, 32)):
    """A film whose frame k is grey level 6 k (every frame distinct)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(n_frames):
            frame = np.full((size[1], size[0], 3), 6 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_canonical_items_name_the_frame_shown(video):
    items = [frame_item(video, t) for t in (0.51, 0.55, 0.5999, 0.6, 0.0)]
    canon = canonical_items(items + [None, "image.png"])
    assert canon[:3] == [frame_item(video, 0.5)] * 3  # 10 fps: one frame from 0.5 to 0.6 s
    assert canon[3:] == [frame_item(video, 0.6), frame_item(video, 0.0), None, "image.png"]
    assert frame_times(video) == pytest.approx(np.arange(30) / 10)


@pytest.mark.parametrize("rate", [Fraction(30000, 1001), 25, Fraction(24000, 1001)])
def test_canonical_items_show_the_same_frame_as_the_times(tmp_path, rate):
    """NTSC rates put frames between the items' 0.1 ms steps: the canonical time must still
    select the frame the original time shows, never the one before."""
    film = _grey_film(tmp_path / "grey.mp4", rate)
    times = np.arange(0.0, 40 / float(rate), 0.0071)
    originals, canonical = FrameReader(film), FrameReader(film)
    for t, item in zip(times, canonical_items([frame_item(film, t) for t in times])):
        shown = np.asarray(originals.frame_at(float(f"{t:.4f}")))
        assert np.array_equal(np.asarray(canonical.frame_at(split_frame_item(item)[1])), shown), t
    assert len(set(canonical_items([frame_item(film, t) for t in times]))) == 40


def test_timeline_faster_than_the_film_shares_its_frames(video):
    """Sampled at 20 Hz, a 10 fps film shows each frame at two samples: one item each."""
    events = pd.DataFrame({"onset": [0.0], "duration": [3.0], "stim_file": [video.name]})
    tl = build_timeline(events, 3.0, StimulusConfig(stim_rate=20.0), video.parent)
    assert len(tl.images) == 60 and len(set(tl.images)) == 30
    assert tl.images[0] == tl.images[1] != tl.images[2]
