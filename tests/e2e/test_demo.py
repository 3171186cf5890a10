"""The README's demo command, run exactly as written, gives reports and real outputs."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def readme_commands():
    """The commands of the README's first code block (the two a new user runs)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = readme_commands()
    assert "bids_vlm demo" in demo and tests.endswith("pytest")
    assert (REPO / ".ci" / "run").read_text().count('pip install -e ".[test]"') == 1


def test_readme_demo_command_runs_as_written():
    demo = readme_commands()[0].split("&&")[-1].strip()  # the install part is done already
    out = Path(demo.split()[-1])
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(demo, shell=True, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = out / "bids_vlm" / "sub-1.html"
    assert f"Report: {report}" in proc.stdout and report.is_file()
    assert (out / "bids_vlm" / "group.html").is_file()
    table = pd.read_csv(next((out / "bids_vlm" / "sub-1" / "func").glob("*_neurons.tsv")),
                        sep="\t")
    assert len(table) == 4 * 256 and set(table.stream) == {"text"}
    # real BOLD answers the prompts: under --bn-definition unique (the presence of a picture and
    # the layer's shared components removed) some ANs keep category-specific BNs (measured
    # 0.030); the complete null gives a layer any BN with probability <= q
    assert (table.n_bn_pos + table.n_bn_neg).gt(0).mean() > 0.01
    # the list CircleCI diffs the container's outputs against (.circleci/config.yml) is current
    listing = subprocess.run(["bash", str(REPO / ".circleci" / "list_outputs.sh"),
                              str(out / "bids_vlm")], capture_output=True, text=True, check=True)
    committed = (REPO / ".circleci" / "demo_outputs.txt").read_text()
    assert listing.stdout == committed, "regenerate .circleci/demo_outputs.txt (see its config)"
