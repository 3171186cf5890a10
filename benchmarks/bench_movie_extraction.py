"""Extraction of a film and its words, from the video file to every AN of CLIP ViT-B/32, against
the bare forward passes of the same frames and texts (issue 13, item 6).

The case: a ``--minutes`` (default 10) film encoded like a real one (H.264, 25 fps, 640 x 360,
``benchmarks/film.py``) with word events at 2.5 words a second (2,000-word vocabulary), sampled
by the real timeline code at 1 Hz (``--stim-rate``): 600 frames and the words on screen in each
sample; ``clip-vit-b-32`` with random weights. The extraction is :func:`bids_vlm.models.extract`
as the pipeline runs it (decoding the film, converting and resizing the frames, tokenizing,
forward passes with every layer hooked and pooled). The reference is the bare ``encode_image`` /
``encode_text`` of the same inputs, already decoded and preprocessed, at the same batch size.

CPU by default (a few minutes on 2 cores, most of it writing the film); ``--device cuda`` for
the GPU. Ends with ``RESULT movie_extraction_vs_bare_forward=<extraction / bare> (target <=
1.2)``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from film import write_film  # noqa: E402


def build_model():
    import open_clip

    from bids_vlm.models.openclip import OpenClipModel

    torch.manual_seed(0)
    module = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    return OpenClipModel("clip-vit-b-32", module, open_clip.image_transform(224, is_train=False),
                         open_clip.get_tokenizer("ViT-B-32"))


def timeline_items(folder: Path, minutes: float, rate: float, rng) -> tuple[list, list]:
    """(unique frame items, unique texts) of the film's timeline as the pipeline builds it."""
    from bids_vlm.config import StimulusConfig
    from bids_vlm.inputs.stimuli import build_timeline, unique_items

    seconds = int(round(minutes * 60))
    write_film(folder / "film.mp4", rng.random((seconds, 8)) ** 2, rng)
    words = [f"word{i}" for i in range(2000)]
    onsets = np.arange(0, seconds, 0.4)
    events = pd.concat([
        pd.DataFrame({"onset": [0.0], "duration": [float(seconds)], "stim_file": ["film.mp4"],
                      "word": ["n/a"]}),
        pd.DataFrame({"onset": onsets, "duration": 0.4, "stim_file": "n/a",
                      "word": rng.choice(words, len(onsets))})]).replace("n/a", None)
    config = StimulusConfig(stim_rate=rate, text_column="word", text_window=1.0 / rate)
    timeline = build_timeline(events, seconds, config, stimuli_dir=str(folder))
    return unique_items([timeline], "image"), unique_items([timeline], "text")


def bare_seconds(model, items_by_stream, batch, device) -> float:
    """Seconds of the bare forward passes over inputs prepared beforehand (untimed)."""
    total = 0.0
    for stream, items in items_by_stream.items():
        inputs = [model.prepare(stream, items[i:i + batch], device)[0]
                  for i in range(0, len(items), batch)]
        with torch.inference_mode():
            model.forward(stream, inputs[0])  # warm-up
            _sync(device)
            start = time.perf_counter()
            for x in inputs:
                model.forward(stream, x)
            _sync(device)
        total += time.perf_counter() - start
        print(f"  bare forward {stream}: {len(items)} items, {time.perf_counter() - start:.1f} s",
              flush=True)
    return total


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--stim-rate", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from bids_vlm.config import ModelConfig
    from bids_vlm.models import extract

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_movie.") as tmp:
        start = time.perf_counter()
        images, texts = timeline_items(Path(tmp), args.minutes, args.stim_rate, rng)
        print(f"case: {args.minutes:g} min film (H.264 25 fps 640x360) sampled at "
              f"{args.stim_rate:g} Hz: {len(images)} frames, {len(texts)} texts; clip-vit-b-32 "
              f"(random weights), batch {args.batch_size}, device {device} "
              f"(film written in {time.perf_counter() - start:.0f} s)", flush=True)
        model = build_model()
        model.module.to(device)
        items = {"image": images, "text": texts}
        bare = bare_seconds(model, items, args.batch_size, device)
        model.frames.close()  # the extraction decodes the film afresh
        config = ModelConfig(models=("clip-vit-b-32",))
        start = time.perf_counter()
        acts = extract(model, items, config, progress=False, device=args.device,
                       batch_size=args.batch_size)
        _sync(device)
        seconds = time.perf_counter() - start
    n_ans = sum(a.shape[1] for a in acts.values())
    print(f"extraction: {seconds:.1f} s ({n_ans} ANs); bare forward {bare:.1f} s")
    print(f"RESULT movie_extraction_vs_bare_forward={seconds / bare:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
