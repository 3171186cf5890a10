"""Finished participants: a completion marker per participant, so that a rerun skips them.

After a participant's graph has run, ``logs/sub-<label>_finished.json`` records the
participant's *analysis fingerprint* (the configuration that changes results, the version of
bids_vlm, and the fingerprints of the input files of its selected runs) and the size of every
output file. A later run skips the participant (unless ``--force``) only when the fingerprint is
the same and every recorded output is still there with its size.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bids_vlm import __version__
from bids_vlm.derivatives import write_json


def participant_fingerprint(node_config_json: str, runs) -> str:
    """Hash of the results' configuration (JSON text of the
    :class:`~bids_vlm.config.AnalysisConfig`: how the run executes, its
    :class:`~bids_vlm.config.Execution`, is not part of it), the version and the runs' inputs.

    runs: the participant's :class:`bids_vlm.inputs.bids.RunSpec` (their ``fingerprint`` changes with
    any input file).
    """
    config = json.loads(node_config_json)
    inputs = sorted((r.bold, r.events, r.fingerprint) for r in runs)
    text = json.dumps([__version__, config, inputs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def marker_path(output_dir, subject: str) -> Path:
    return Path(output_dir) / "logs" / f"sub-{subject}_finished.json"


def participant_outputs(output_dir, subject: str) -> dict:
    """{path relative to ``output_dir``: size in bytes} of the participant's outputs: never a
    hidden file or folder (a temporary ``.<name>.tmp`` of an atomic write, a lock file)."""
    out = Path(output_dir)
    files = [p for p in (out / f"sub-{subject}").rglob("*") if p.is_file()]
    files += [p for p in [out / f"sub-{subject}.html"] if p.is_file()]
    files = [p for p in files
             if not any(part.startswith(".") for part in p.relative_to(out).parts)]
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(files)}


def mark_finished(output_dir, subject: str, fingerprint: str) -> Path:
    """Write the participant's completion marker (atomically)."""
    return write_json(marker_path(output_dir, subject),
                      {"subject": subject, "fingerprint": fingerprint, "version": __version__,
                       "outputs": participant_outputs(output_dir, subject)})


def is_finished(output_dir, subject: str, fingerprint: str) -> bool:
    """Whether the marker says the participant finished with this fingerprint and every
    output it lists is still there, with the same size."""
    try:
        marker = json.loads(marker_path(output_dir, subject).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("fingerprint") != fingerprint:
        return False
    outputs = marker.get("outputs") or {}
    out = Path(output_dir)
    return bool(outputs) and all((out / rel).is_file() and (out / rel).stat().st_size == size
                                 for rel, size in outputs.items())
