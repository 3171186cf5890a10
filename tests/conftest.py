"""Shared fixtures: generated datasets and the CLI run on them (made once per session), and
the marking of tests/e2e/ (the real command on whole datasets) as slow.

Layout: ``tests/<package>/`` holds the unit tests of ``bids_vlm/<package>/`` (``base/``: the
modules at the package's top level), ``tests/e2e/`` the runs of the ``bids_vlm`` command;
``pytest -m "not slow"`` is the quick suite (the unit tests), ``pytest`` all of it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NIPYPE_NO_ET", "1")

from datagen import make_planted_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# a Python program that takes the participant locks of its arguments and holds them until killed
HOLDER = """
import sys, time
from bids_vlm import locks
held = [locks.acquire(p, "sub-01") for p in sys.argv[1:]]
print("locked", flush=True)
time.sleep(600)
"""


def bids_vlm_command() -> str:
    """The installed console script of the Python running the tests."""
    script = Path(sys.executable).parent / "bids_vlm"
    return str(script) if script.exists() else "bids_vlm"


def run_cli(*args, check=True, env=None, timeout=900):
    """Run the installed ``bids_vlm`` console script; returns the CompletedProcess."""
    proc = subprocess.run([bids_vlm_command(), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bids_vlm {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """2 subjects x 2 runs with signal of known tiny-clip ANs in known voxels: each AN's own
    part (its regressor without stimulus presence and its layer's top 3 components), which
    the default --bn-definition unique finds."""
    return make_planted_dataset(tmp_path_factory.mktemp("planted") / "bids")


@pytest.fixture(scope="session")
def planted_whole(tmp_path_factory):
    """The same with the ANs' whole regressors planted (for --bn-definition marginal, and
    for encoding models, which ridge recovers best along the layer's main components)."""
    return make_planted_dataset(tmp_path_factory.mktemp("planted_whole") / "bids",
                                unique=False)


# the options of ``planted_outputs``: a rerun into its work directory must give the same ones
PLANTED_OPTIONS = ("--bn-definition", "marginal", "--banded-layers", "2", "last")


@pytest.fixture(scope="session")
def planted_outputs(planted_whole, tmp_path_factory):
    """The participant and group levels of the CLI run on the planted dataset with the ANs'
    whole regressors planted and --bn-definition marginal (the encoding models recover such
    plants best; tests/e2e/test_cli.py::test_marginal_and_unique_bns_of_a_whole_regressor and the
    ``planted`` fixture cover the default unique BNs)."""
    base = tmp_path_factory.mktemp("planted_out")
    out, work = base / "out", base / "work"
    part = run_cli(planted_whole.root, out, "participant", "-q", "-w", work, *PLANTED_OPTIONS)
    group = run_cli(planted_whole.root, out, "group", "-q", "-w", work,
                    "--bn-definition", "marginal")
    return {"out": out, "work": work, "participant": part, "group": group}


@pytest.fixture(scope="session")
def occipital(tmp_path_factory):
    """2 participants on a grid in occipital cortex (MNI152NLin2009cAsym): an image AN planted
    (positive) in visual voxels, a text AN planted (negative) in voxels outside every network;
    participant (association and encoding, so hierarchy and lesion tables too) and group levels
    run by the CLI."""
    import nibabel as nib
    import numpy as np

    from bids_vlm.analysis.atlases import default_networks
    from bids_vlm.analysis.networks import network_masks
    from datagen import Plant

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-9, -99, -3]
    shape = (6, 6, 6)
    masks = network_masks(default_networks(), nib.Nifti1Image(np.ones(shape, np.uint8), affine))
    visual = np.flatnonzero(masks["Visual"])[:12].tolist()
    outside = np.flatnonzero(~np.any(list(masks.values()), axis=0))[:12].tolist()
    base = tmp_path_factory.mktemp("occipital")
    data = make_planted_dataset(base / "bids", n_subjects=2, shape=shape, affine=affine,
                                plants=(Plant("image", 2, 7, visual, 0.8),
                                        Plant("text", 1, 3, outside, -0.8)), unique=False)
    out, work = base / "out", base / "work"
    # a 6 x 6 x 6 grid leaves the atlas no room to move: the hypergeometric enrichment here
    # (whole regressors planted, --bn-definition marginal)
    run_cli(data.root, out, "participant", "-q", "-w", work, "--n-surrogates", "0",
            "--bn-definition", "marginal")
    run_cli(data.root, out, "group", "-q", "-w", work, "--n-surrogates", "0",
            "--bn-definition", "marginal")
    return out


@pytest.fixture(scope="module")
def live_payloads(tmp_path_factory):
    """A folder in which every code-running checkpoint payload of tests/weights.py was shown
    to run when loaded without bids_vlm's checks (so a test that sees it refused proves
    something)."""
    from weights import prove_payloads_live  # torch: only for the tests that use it

    return prove_payloads_live(tmp_path_factory.mktemp("guard"))


E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e/ is slow (it runs the command on a dataset)."""
    for item in items:
        if E2E in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
