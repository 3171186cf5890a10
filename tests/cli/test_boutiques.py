"""The Boutiques descriptor: generated from the parser, committed, valid, and its simulated
command lines are accepted by the parser."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from bids_vlm.cli.boutiques import SKIP, descriptor
from bids_vlm.cli.parser import build_parser
from conftest import REPO

BOSH = str(Path(sys.executable).parent / "bosh")


def test_committed_descriptor_is_the_generated_one():
    committed = json.loads((REPO / "boutiques.json").read_text())
    assert committed == json.loads(json.dumps(descriptor(build_parser()))), \
        "regenerate: python -m bids_vlm.cli.boutiques > boutiques.json"


def test_every_option_is_described_and_nothing_else():
    parser = build_parser()
    dests = {a.dest for a in parser._actions} - SKIP
    ids = {i["id"] for i in descriptor(parser)["inputs"]}
    assert dests == ids
    flags = {i["command-line-flag"] for i in descriptor(parser)["inputs"]
             if "command-line-flag" in i}
    assert "--participant-label" in flags and "--fdr-q" in flags and "--models" in flags


def test_bosh_validate_and_simulate(planted, tmp_path):
    descriptor_path = REPO / "boutiques.json"
    proc = subprocess.run([BOSH, "validate", str(descriptor_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    invocation = tmp_path / "invocation.json"
    invocation.write_text(json.dumps({
        "bids_dir": str(planted.root), "output_dir": str(tmp_path / "out"),
        "analysis_level": "participant", "participant_label": ["01"],
        "models": ["tiny-clip"], "layers": [1, 2], "fdr_q": 0.01, "quiet": True}))
    proc = subprocess.run([BOSH, "exec", "simulate", str(descriptor_path), "-i",
                           str(invocation)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    command = next(line for line in proc.stdout.splitlines() if line.startswith("bids_vlm "))
    opts = build_parser().parse_args(shlex.split(command)[1:])
    assert opts.participant_label == ["01"] and opts.layers == [1, 2] and opts.fdr_q == 0.01
    assert opts.quiet and opts.analysis_level == "participant"
