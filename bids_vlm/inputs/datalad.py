"""Inputs of DataLad / git-annex datasets (OpenNeuro's distribution): a file whose content was
not fetched is a symbolic link into ``.git/annex/objects`` whose target is absent. Such a file
is reported before any computation with the exact ``datalad get`` to run (exit 66)."""
from __future__ import annotations

import os
from pathlib import Path

from bids_vlm.errors import ContentNotPresentError, DataError


def annex_target(path) -> str | None:
    """The link target of ``path`` when it is a link into a git-annex object store, else
    None."""
    if not os.path.islink(path):
        return None
    target = os.readlink(path)
    return target if "annex/objects" in target.replace(os.sep, "/") else None


def check_present(path, dataset=None) -> None:
    """ContentNotPresentError (exit 66) naming ``datalad get -d <dataset> <path>`` when
    ``path`` is an annex link whose content is absent; DataError for any other broken link.
    dataset: the dataset's root (default: the path's folder)."""
    if path is None or not os.path.islink(path) or os.path.exists(path):
        return
    if annex_target(path) is None:
        raise DataError(f"broken symbolic link (to {os.readlink(path)})", path)
    root = Path(dataset) if dataset else Path(path).parent
    raise ContentNotPresentError(
        "the file's content is not present (a git-annex link whose object was not fetched); "
        f"fetch it with: datalad get -d {root} {path}", path)
