"""``bids_vlm demo OUT_DIR``: the whole analysis, offline, on the embedded real demo data.

The demo dataset is Haxby et al. (2001) subject 1, whole-brain 25 mm runs (see
``bids_vlm/data/demo/haxby2001/PROVENANCE.md``). The object categories become text prompts
("a photo of a {trial_type}") for the random-weight ``tiny-clip`` model. Outputs go to
``OUT_DIR/bids_vlm`` (the derivative dataset) and ``OUT_DIR/work`` (the Nipype cache).
"""
from __future__ import annotations

import argparse
from pathlib import Path

DEMO_DATASET = Path(__file__).resolve().parents[1] / "data" / "demo" / "haxby2001"
DEMO_ARGS = ["--participant-label", "1", "--models", "tiny-clip",
             "--text-template", "a photo of a {trial_type}"]


def demo_runs(argv) -> tuple[list[list[str]], Path]:
    """The ``bids_vlm`` command lines of ``bids_vlm demo`` ``argv`` (participant, then group
    level) and the derivative dataset they write."""
    parser = argparse.ArgumentParser(
        prog="bids_vlm demo", description="Run the participant and group analysis on the "
        "embedded Haxby 2001 demo data (offline).")
    parser.add_argument("out_dir", type=Path, help="folder for the outputs and the work dir")
    parser.add_argument("--nprocs", type=int, default=1)
    parser.add_argument("-q", "--quiet", action="store_true")
    opts = parser.parse_args(argv)
    out = opts.out_dir.expanduser().resolve()
    common = ["-w", str(out / "work"), "--nprocs", str(opts.nprocs)] + (["-q"] if opts.quiet else [])
    derivatives = out / "bids_vlm"
    return [[str(DEMO_DATASET), str(derivatives), level, *DEMO_ARGS, *common]
            for level in ("participant", "group")], derivatives
