"""The output dataset passes the BIDS validator (bids-validator-deno, offline) with no errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"


@pytest.mark.skipif(not VALIDATOR.exists() and not shutil.which("bids-validator-deno"),
                    reason="bids-validator-deno is not installed (pip install bids-validator-deno)")
def test_outputs_pass_the_bids_validator(planted_outputs):
    exe = str(VALIDATOR) if VALIDATOR.exists() else shutil.which("bids-validator-deno")
    proc = subprocess.run([exe, str(planted_outputs["out"]), "--json"], capture_output=True,
                          text=True, timeout=600)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == [], errors
