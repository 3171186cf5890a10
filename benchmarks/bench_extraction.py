"""AN extraction (forward hooks + pooling of every FFN layer) vs the bare forward pass of the
same model on the same batch: full-size CLIP ViT-B/32 (default) or METER (``--model meter``:
CLIP-ViT-B/16 at 288 px + RoBERTa + 6 co-attention layers, random token ids) with random weights.

CPU by default (about a minute on 2 cores for CLIP, a few for METER); ``--device cuda`` for the
GPU. Prints the time of both per stream and ends with ``RESULT extraction_vs_bare_forward=<bare /
extraction>`` over the streams together (target >= 0.9: hooks and pooling cost at most ~10%).
For METER the cross streams are one forward pass recording both cross-image and cross-text.
"""
from __future__ import annotations

import argparse
import contextlib
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


def build_meter(device):
    from bids_vlm.models.meter import MeterModel
    from bids_vlm.models.meter_arch import Meter, MeterArch

    torch.manual_seed(0)
    model = MeterModel("meter-clip16-roberta", Meter(MeterArch()), tokenizer=None)
    model.module.to(device)
    return model


def meter_inputs(model, stream, batch, device):
    """(inputs, {recorded stream: (valid, cls index)}) with random token ids of 10-50 tokens."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(10, 51, (batch,), generator=gen)
    ids = torch.ones(batch, 50, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, 1:n - 1], ids[i, n - 1] = 0, torch.randint(3, 50000, (n - 2,),
                                                                     generator=gen), 2
    ids, valid = ids.to(device), (ids != 1).to(device)
    pixels = torch.randn(batch, 3, 288, 288, device=device)
    first = torch.zeros(batch, dtype=torch.long, device=device)
    image_valid = torch.ones(batch, model.module.arch.vit_tokens, dtype=torch.bool, device=device)
    if stream == "image":
        return pixels, {"image": (image_valid, first)}
    if stream == "text":
        return (ids, valid.long()), {"text": (valid, first)}
    return (ids, valid.long(), pixels), {"cross-image": (image_valid, first),
                                         "cross-text": (valid, first)}


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


def clip_inputs(model, stream, batch, device):
    data, valid, cls_index = inputs(model, stream, batch, device)
    return data, {stream: (valid, cls_index)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=["clip", "meter"], default="clip")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    if opts.model == "meter":
        model, make, streams = build_meter(opts.device), meter_inputs, ("image", "text", "cross")
    else:
        model, make, streams = build(opts.device), clip_inputs, ("image", "text")
    total_bare = total_extract = 0.0
    for stream in streams:
        data, recorded = make(model, stream, opts.batch, opts.device)
        forward_stream = next(iter(recorded))

        def bare():
            with torch.inference_mode():
                model.forward(forward_stream, data)

        def extract():
            with contextlib.ExitStack() as stack, torch.inference_mode():
                pooled = [stack.enter_context(recording(
                    model.layer_modules(s), valid, cls_index, "mean", model.batch_first(s)))
                    for s, (valid, cls_index) in recorded.items()]
                model.forward(forward_stream, data)
            return [{k: v.cpu() for k, v in p.items()} for p in pooled]

        t_bare = timed(bare, opts.repeats, opts.device)
        t_extract = timed(extract, opts.repeats, opts.device)
        total_bare += t_bare
        total_extract += t_extract
        layers = sum(model.streams[s].n_layers for s in recorded)
        print(f"{stream}: bare forward {t_bare * 1000:.1f} ms, extraction of {layers} layers x "
              f"{model.streams[forward_stream].width} ANs {t_extract * 1000:.1f} ms "
              f"(batch {opts.batch}, {opts.device})")
    print(f"RESULT extraction_vs_bare_forward={total_bare / total_extract:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
