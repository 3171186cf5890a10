"""``python -m bids_vlm.bake``: put model weights where bids_vlm reads them, once, ahead of a run.

The Dockerfile runs it at build time (build arg ``MODELS``), so that the image never downloads::

    python -m bids_vlm.bake --models clip-vit-b-32 --dest /opt/bids_vlm/models
    python -m bids_vlm.bake --models clip-vit-b-32 --dest DIR --dry-run           # print only
    python -m bids_vlm.bake --models clip-vit-b-32 --dest DIR --from-file CKPT    # a local file

OpenAI CLIPs (``clip-vit-b-32``, ``clip-vit-b-16``) go to ``<dest>/<name>/<weights file>``, the
layout :func:`bids_vlm.models.openclip.find_weights` reads (``--model-dir`` or
``$BIDS_VLM_MODEL_DIR``); the file is open_clip's Hugging Face copy of the weights.
``hf-clip:<hub id>`` goes to the Hugging Face cache (``$HF_HOME``), where
:func:`bids_vlm.models.hfclip.resolve` finds it. ``tiny-clip`` has nothing to fetch.
Files are written under a temporary name and renamed. Exit codes: 0 done, 2 usage,
66 the weights could not be fetched or the local file is missing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bids_vlm.errors import EXIT_WEIGHTS
from bids_vlm.models import hfclip, openclip

HF_CLIP_FILES = ["*.json", "*.txt", "*.safetensors"]  # config, processor, tokenizer, weights


@dataclass(frozen=True)
class Fetch:
    """One download: ``files`` of the hub repository ``repo``, put at ``target``."""

    model: str
    repo: str
    files: tuple
    target: Path


def plan(model: str, dest: Path) -> Fetch | None:
    """What baking ``model`` into ``dest`` fetches (None: nothing, the model has no weights).

    Raises ValueError for a model that cannot be baked.
    """
    if model in openclip.OPENAI:
        arch, tag = openclip.OPENAI[model]
        repo = openclip._hf_repo(arch, tag)
        fname = openclip.WEIGHT_FILES[0]
        return Fetch(model, repo, (fname,), dest / model / fname)
    if model == "tiny-clip":
        return None
    hub_id = model.removeprefix(hfclip.PREFIX)
    if model.startswith(hfclip.PREFIX) and hub_id and not Path(hub_id).expanduser().exists():
        cache = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
        return Fetch(model, hub_id, tuple(HF_CLIP_FILES), cache)
    raise ValueError(f"cannot bake '{model}': choose from {', '.join(openclip.OPENAI)}, "
                     f"tiny-clip, or hf-clip:<hub id>")


def describe(fetch: Fetch) -> str:
    """One line: what is fetched from where to where."""
    return f"{fetch.model}: {fetch.repo} [{', '.join(fetch.files)}] -> {fetch.target}"


def install_file(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` (temporary name, then rename); readable by every user."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    partial.chmod(0o644)
    os.replace(partial, target)
    return target


def from_file(fetch: Fetch, source: Path) -> Path:
    """Install a local checkpoint as the weights of an OpenAI CLIP; a ``.bin`` (PyTorch pickle)
    keeps open_clip's ``.bin`` name, anything else is taken as safetensors."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    if source.suffix == ".bin":
        return install_file(source, fetch.target.with_name(openclip.WEIGHT_FILES[1]))
    _check_safetensors(source)
    return install_file(source, fetch.target)


def _check_safetensors(path: Path) -> None:
    """Raise ValueError unless ``path`` is a readable safetensors file with tensors in it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if not list(handle.keys()):
                raise ValueError("no tensors in it")
    except Exception as exc:
        raise ValueError(f"{path}: not a usable safetensors checkpoint ({exc})") from exc


def download(fetch: Fetch) -> Path:
    """Fetch from the Hugging Face hub (needs the network; the build, never a run)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if fetch.model.startswith(hfclip.PREFIX):
        return Path(snapshot_download(fetch.repo, allow_patterns=list(fetch.files),
                                      cache_dir=fetch.target))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(hf_hub_download(fetch.repo, fetch.files[0], cache_dir=tmp))
        _check_safetensors(path)
        return install_file(path, fetch.target)


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m bids_vlm.bake", description="Put model weights where bids_vlm reads "
        "them (the Dockerfile's build step); running never downloads.")
    parser.add_argument("--models", nargs="+", required=True,
                        help=f"{', '.join(openclip.OPENAI)}, tiny-clip or hf-clip:<hub id>")
    parser.add_argument("--dest", type=Path, required=True,
                        help="the model directory (--model-dir / $BIDS_VLM_MODEL_DIR at run time)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched")
    parser.add_argument("--from-file", type=Path,
                        help="a local checkpoint to install instead of downloading (one model)")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    opts = parser.parse_args(argv)
    try:
        fetches = [plan(model, opts.dest.expanduser()) for model in opts.models]
    except ValueError as exc:
        parser.error(str(exc))
    fetches = [fetch for fetch in fetches if fetch is not None]
    if opts.from_file and (len(fetches) != 1 or fetches[0].model not in openclip.OPENAI):
        parser.error(f"--from-file needs exactly one of {', '.join(openclip.OPENAI)}")
    for fetch in fetches:
        print(("would fetch " if opts.dry_run else "fetching ") + describe(fetch), flush=True)
        if opts.dry_run:
            continue
        try:
            done = from_file(fetch, opts.from_file) if opts.from_file else download(fetch)
        except Exception as exc:  # network, hub or file errors: all mean "no weights"
            print(f"bids_vlm.bake: error: {fetch.model}: {exc}", file=sys.stderr)
            return EXIT_WEIGHTS
        print(f"{fetch.model}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
