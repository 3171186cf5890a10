"""Logging of a command-line run: bids_vlm's lines at INFO (WARNING with -q), other libraries'
only from WARNING unless -v, Nipype's crash tracebacks only in their crash files unless -v."""
from __future__ import annotations

import logging
import sys


def setup_logging(verbose: int, quiet: bool):
    """One stderr handler on the root logger (made once, pointed at today's stderr)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "bids_vlm", False)), None)
    if handler is None:  # one handler, also when main() runs several times in one process
        handler = logging.StreamHandler()
        handler.bids_vlm = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: "
                                               "%(message)s", datefmt="%H:%M:%S"))
        root.addHandler(handler)
    handler.stream = sys.stderr  # today's stderr (not one a caller has closed since)
    root.setLevel(level if verbose else max(level, logging.WARNING))
    logging.getLogger("bids_vlm").setLevel(level)
    # local import: Nipype takes ~1 s to import; only when a level runs
    from nipype import config as nipype_config
    # local import: Nipype takes ~1 s to import; only when a level runs
    from nipype import logging as nipype_logging

    nlevel = "INFO" if verbose else "WARNING"
    nipype_config.update_config({"logging": {"workflow_level": nlevel,
                                             "interface_level": nlevel,
                                             "utils_level": "WARNING"}})
    nipype_logging.update_logging(nipype_config)
    nipype_root = logging.getLogger("nipype")
    for extra in [h for h in nipype_root.handlers if type(h) is logging.StreamHandler]:
        nipype_root.removeHandler(extra)  # Nipype's own stdout copy of every line: ours suffice
    workflow_logger = logging.getLogger("nipype.workflow")
    if verbose:
        workflow_logger.removeFilter(_CRASH_FILE_ONLY)
    else:
        workflow_logger.addFilter(_CRASH_FILE_ONLY)


class _CrashFileOnly(logging.Filter):
    """Nipype logs a failed node's traceback with the crash file's name; without -v only the
    name is logged (the traceback is in the file, and the error message names it)."""

    def filter(self, record):
        if str(record.msg).startswith("Saving crash info to") and record.args:
            record.msg, record.args = "Saving crash info to %s", record.args[:1]
        return True


_CRASH_FILE_ONLY = _CrashFileOnly()
