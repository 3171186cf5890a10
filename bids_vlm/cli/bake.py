"""``python -m bids_vlm.cli.bake``: put model weights where bids_vlm reads them, once, ahead of a run.

The Dockerfile runs it at build time (build arg ``MODELS``), so that the image never downloads::

    python -m bids_vlm.cli.bake --models clip-vit-b-32 --dest /opt/bids_vlm/models
    python -m bids_vlm.cli.bake --models clip-vit-b-32 --dest DIR --dry-run           # print only
    python -m bids_vlm.cli.bake --models clip-vit-b-32 --dest DIR --from-file CKPT    # a local file
    python -m bids_vlm.cli.bake --models clip-vit-b-32 --dest DIR --from-dir weights   # local files

OpenAI CLIPs (``clip-vit-b-32``, ``clip-vit-b-16``) go to ``<dest>/<name>/<weights file>``, the
layout :func:`bids_vlm.models.openclip.find_weights` reads (``--model-dir`` or
``$BIDS_VLM_MODEL_DIR``); the file is open_clip's Hugging Face copy of the weights.
``meter-clip16-roberta`` takes its checkpoint from ``--from-file`` (METER releases them on GitHub)
into ``<dest>/meter-clip16-roberta/`` and fetches the ``roberta-base`` tokenizer files next to it
(unless already there). ``hf-clip:<hub id>`` goes to the Hugging Face cache (``$HF_HOME``), where
:func:`bids_vlm.models.hfclip.resolve` finds it. ``tiny-clip`` and ``tiny-meter`` have nothing to fetch.
With ``--from-dir DIR`` (the Dockerfile's ``weights/`` folder), a model that has a folder
``DIR/<model>/`` with one checkpoint in it is installed from that file instead (METER also takes
its tokenizer from ``DIR/meter-clip16-roberta/roberta-base/``); the others are fetched.
Files are written under a temporary name and renamed. A ``--from-file`` checkpoint is inspected
before anything reads it (:mod:`bids_vlm.models.checkpoint`): a TorchScript archive, or a pickle
that would call code, is refused. Exit codes: 0 done, 2 usage, 64 the local file was refused
as unsafe (it would run code when loaded), 66 the weights could not be fetched, the local file
is missing or unusable, or the environment cannot import what baking needs (open_clip).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bids_vlm.errors import EXIT_WEIGHTS, UnsafeCheckpointError
from bids_vlm.models import hfclip, meter, openclip
from bids_vlm.models.checkpoint import (TORCH_FORMATS, check_checkpoint_file, checkpoint_format,
                                        safe_torch_load)

HF_CLIP_FILES = ["*.json", "*.txt", "*.safetensors"]  # config, processor, tokenizer, weights
METER_TOKENIZER_FILES = ("vocab.json", "merges.txt")


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
    if model in ("tiny-clip", "tiny-meter"):
        return None
    if model == meter.NAME:  # the tokenizer from the hub; the checkpoint with --from-file
        return Fetch(model, "roberta-base", METER_TOKENIZER_FILES, dest / model / "roberta-base")
    hub_id = model.removeprefix(hfclip.PREFIX)
    if model.startswith(hfclip.PREFIX) and hub_id and not Path(hub_id).expanduser().exists():
        cache = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
        return Fetch(model, hub_id, tuple(HF_CLIP_FILES), cache)
    raise ValueError(f"cannot bake '{model}': choose from {', '.join(openclip.OPENAI)}, "
                     f"{meter.NAME}, "
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
    """Install a local checkpoint as the weights of an OpenAI CLIP (a ``.bin`` (PyTorch pickle)
    keeps open_clip's ``.bin`` name, anything else is taken as safetensors), or a METER
    checkpoint next to its tokenizer folder. Every file is read with the safe loader first;
    :class:`~bids_vlm.errors.UnsafeCheckpointError` when it would run code."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    if fetch.model == meter.NAME:
        meter.read_checkpoint(source)  # a METER state dict, and no code in the file
        return install_file(source, fetch.target.parent / f"{source.stem}.ckpt")
    if source.suffix == ".bin":
        _check_state_dict(source)
        return install_file(source, fetch.target.with_name(openclip.WEIGHT_FILES[1]))
    if checkpoint_format(source) in TORCH_FORMATS:
        check_checkpoint_file(source)  # a TorchScript archive is refused, not just "unusable"
    _check_safetensors(source)
    return install_file(source, fetch.target)


def _check_state_dict(path: Path) -> None:
    """Raise ValueError unless ``path`` is a PyTorch file holding a dict (read safely; a file
    that would run code raises :class:`~bids_vlm.errors.UnsafeCheckpointError`)."""
    data = safe_torch_load(path)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: not a usable PyTorch state dict (it holds a "
                         f"{type(data).__name__})")


def _check_safetensors(path: Path) -> None:
    """Raise ValueError unless ``path`` is a readable safetensors file with tensors in it."""
    from safetensors import safe_open  # only when baking weights

    try:
        with safe_open(str(path), framework="pt") as handle:
            if not list(handle.keys()):
                raise ValueError("no tensors in it")
    except Exception as exc:
        raise ValueError(f"{path}: not a usable safetensors checkpoint ({exc})") from exc


def download(fetch: Fetch) -> Path:
    """Fetch from the Hugging Face hub (needs the network; the build, never a run)."""
    # local import: only when looking for downloaded weights
    from huggingface_hub import hf_hub_download, snapshot_download

    if fetch.model.startswith(hfclip.PREFIX):
        return Path(snapshot_download(fetch.repo, allow_patterns=list(fetch.files),
                                      cache_dir=fetch.target))
    if fetch.model == meter.NAME:
        with tempfile.TemporaryDirectory() as tmp:
            for fname in fetch.files:
                install_file(Path(hf_hub_download(fetch.repo, fname, cache_dir=tmp)),
                             fetch.target / fname)
        return fetch.target
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(hf_hub_download(fetch.repo, fetch.files[0], cache_dir=tmp))
        _check_safetensors(path)
        return install_file(path, fetch.target)


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m bids_vlm.cli.bake", description="Put model weights where bids_vlm reads "
        "them (the Dockerfile's build step); running never downloads.")
    parser.add_argument("--models", nargs="+", required=True,
                        help=f"{', '.join(openclip.OPENAI)}, {meter.NAME} (with --from-file), "
                             "tiny-clip or hf-clip:<hub id>")
    parser.add_argument("--dest", type=Path, required=True,
                        help="the model directory (--model-dir / $BIDS_VLM_MODEL_DIR at run time)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched")
    parser.add_argument("--from-file", type=Path,
                        help="a local checkpoint to install instead of downloading (one model)")
    parser.add_argument("--from-dir", type=Path,
                        help="a folder of local weights laid out as the model directory "
                             "(DIR/<model>/<checkpoint>; METER also DIR/meter-clip16-roberta/"
                             "roberta-base/): models found there are installed from it, the "
                             "others fetched")
    return parser


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def local_checkpoint(model: str, folder: Path | None) -> Path | None:
    """The one checkpoint file of ``model`` in ``folder/<model>/``, or None when there is no
    such folder or it holds no checkpoint; ValueError when it holds several."""
    sub = folder / model if folder else None
    if sub is None or not sub.is_dir():
        return None
    found = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(found) > 1:
        raise ValueError(f"{sub}: several checkpoints ({', '.join(p.name for p in found)}); "
                         "keep one per model")
    return found[0] if found else None


def install_tokenizer(fetch: Fetch, folder: Path | None) -> bool:
    """Copy METER's tokenizer files from ``folder/meter-clip16-roberta/roberta-base/`` when
    they are all there (True), so that nothing is fetched."""
    local = folder / fetch.model / "roberta-base" if folder else None
    if local is None or not all((local / f).is_file() for f in fetch.files):
        return False
    for fname in fetch.files:
        install_file(local / fname, fetch.target / fname)
    return True


def main(argv=None) -> int:
    parser = _parser()
    opts = parser.parse_args(argv)
    try:  # plan() imports open_clip: a broken environment is "no weights", not a traceback
        fetches = [plan(model, opts.dest.expanduser()) for model in opts.models]
    except ValueError as exc:
        parser.error(str(exc))
    except ImportError as exc:
        print(f"bids_vlm.cli.bake: error: cannot import what baking needs ({exc}); the Python "
              "environment is incomplete or broken", file=sys.stderr)
        return EXIT_WEIGHTS
    fetches = [fetch for fetch in fetches if fetch is not None]
    local = (*openclip.OPENAI, meter.NAME)
    if opts.from_file and (len(fetches) != 1 or fetches[0].model not in local):
        parser.error(f"--from-file needs exactly one of {', '.join(local)}")
    for fetch in fetches:
        code = _bake(fetch, opts)
        if code:
            return code
    return 0


def _bake(fetch: Fetch, opts) -> int:
    """Install one model's weights (from --from-file, --from-dir or the hub); its exit code."""
    try:
        source = opts.from_file or local_checkpoint(fetch.model, opts.from_dir)
    except ValueError as exc:
        print(f"bids_vlm.cli.bake: error: {fetch.model}: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS
    origin = f"installing {fetch.model} from {source}" if source else \
        ("would fetch " if opts.dry_run else "fetching ") + describe(fetch)
    print(origin, flush=True)
    if fetch.model == meter.NAME and not source and not opts.dry_run:
        print(f"bids_vlm.cli.bake: error: {meter.NAME}: METER's checkpoints are released on "
              "GitHub (zdou0830/METER), not on the Hugging Face hub: download one and pass "
              "it with --from-file or --from-dir", file=sys.stderr)
        return EXIT_WEIGHTS
    if opts.dry_run:
        return 0
    try:
        done = from_file(fetch, source) if source else download(fetch)
        if fetch.model == meter.NAME and not (fetch.target / "vocab.json").is_file() \
                and not install_tokenizer(fetch, opts.from_dir):
            download(fetch)  # the checkpoint from the file, the tokenizer fetched
    except UnsafeCheckpointError as exc:  # refused before anything from it ran
        print(f"bids_vlm.cli.bake: error: {fetch.model}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # network, hub or file errors: all mean "no weights"
        print(f"bids_vlm.cli.bake: error: {fetch.model}: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS
    print(f"{fetch.model}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
