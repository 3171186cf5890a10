"""AN extraction (forward hooks + pooling of every FFN layer) vs the bare forward pass of the
same model on the same batch: full-size CLIP ViT-B/32 with random weights.

CPU by default (about a minute on 2 cores); ``--device cuda`` for the GPU. Prints the time of
both per stream and ends with ``RESULT extraction_vs_bare_forward=<bare / extraction>`` for the
image and text streams together (target >= 0.9: hooks and pooling cost at most ~10%).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bids_vlm.models.base import recording
from bids_vlm.models.openclip import OpenClipModel


def build(device):
    import open_clip

    torch.manual_seed(0)
    module = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    preprocess = open_clip.image_transform(224, is_train=False)
    model = OpenClipModel("clip-vit-b-32", module, preprocess, open_clip.get_tokenizer("ViT-B-32"))
    model.module.to(device)
    return model


def inputs(model, stream, batch, device):
    if stream == "image":
        pixels = torch.randn(batch, 3, 224, 224, device=device)
        n_tokens = model.module.visual.positional_embedding.shape[0]
        return (pixels, torch.ones(batch, n_tokens, dtype=torch.bool, device=device),
                torch.zeros(batch, dtype=torch.long, device=device))
    texts = [f"a photo of object number {i} on a table" for i in range(batch)]
    return model.prepare("text", texts, device)


def timed(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    model = build(opts.device)
    total_bare = total_extract = 0.0
    for stream in ("image", "text"):
        data, valid, cls_index = inputs(model, stream, opts.batch, opts.device)
        modules = model.layer_modules(stream)

        def bare():
            with torch.inference_mode():
                model.forward(stream, data)

        def extract():
            with torch.inference_mode(), recording(modules, valid, cls_index, "mean",
                                                   model.batch_first(stream)) as pooled:
                model.forward(stream, data)
            return {k: v.cpu() for k, v in pooled.items()}

        t_bare = timed(bare, opts.repeats, opts.device)
        t_extract = timed(extract, opts.repeats, opts.device)
        total_bare += t_bare
        total_extract += t_extract
        print(f"{stream}: bare forward {t_bare * 1000:.1f} ms, extraction of "
              f"{len(modules)} layers x {model.streams[stream].units} ANs "
              f"{t_extract * 1000:.1f} ms (batch {opts.batch}, {opts.device})")
    print(f"RESULT extraction_vs_bare_forward={total_bare / total_extract:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
