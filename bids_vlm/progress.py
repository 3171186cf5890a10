"""Progress bars of the long stages (extraction, association, encoding), silenced by
``bids_vlm -q``.

The CLI sets ``BIDS_VLM_QUIET=1`` for ``-q``; the Nipype nodes (in this process or in
MultiProc workers) inherit it. It is read when a bar is made, not at import time, and it is not
part of the analysis configuration, so ``-q`` does not invalidate cached results.
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm

QUIET_ENV = "BIDS_VLM_QUIET"


def progress(iterable, enabled=True, **kwargs):
    """``tqdm(iterable)``, disabled when ``enabled`` is false or the run is quiet."""
    quiet = os.environ.get(QUIET_ENV) == "1"
    return tqdm(iterable, disable=not enabled or quiet, **kwargs)
