"""Writing BIDS-Derivatives files: names, sidecars, atomic writes, the dataset description.

Every file is written under a temporary name in its final folder and renamed into place, so an
interrupted run never leaves a half-written output.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import masking

from bids_vlm import __version__
from bids_vlm.errors import OutputError

ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "space", "desc",
                "stat")
BIDSIGNORE = ("*_statmap.nii.gz\n*_statmap.json\n*_neurons.tsv\n*_neurons.json\n"
              "*_encoding.tsv\n*_encoding.json\n*_networks.tsv\n*_networks.json\n"
              "*_layers.tsv\n*_layers.json\n*_jaccard.tsv\n*_jaccard.json\n"
              "*_atoms.tsv\n*_atoms.json\n*_atoms.h5\n"
              "*_bandedencoding.tsv\n*_bandedencoding.json\n"
              "*_hierarchy.tsv\n*_hierarchy.json\n*_lesion.tsv\n*_lesion.json\n"
              "*_msi.tsv\n*_msi.json\n*_streamoverlap.tsv\n*_streamoverlap.json\n"
              "*_association.h5\n*_association.json\n*.html\nfigures\ngroup\nlogs\n")
README = """# bids_vlm derivatives

Artificial-neuron (AN) to voxel (BN) associations, layer-wise encoding and neuron-level
analyses of vision-language models, written by bids_vlm (see dataset_description.json for the
version). Open sub-<label>.html and group.html for the reports; every map and table has a JSON
sidecar describing it. Non-standard files (statmaps, neuron tables, HDF5 results, reports) are
listed in .bidsignore.
"""


def bids_name(entities: dict, suffix: str, extension: str) -> str:
    """``sub-01_task-x_desc-y_suffix.ext`` with entities in BIDS order (None values skipped)."""
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join(parts + [suffix]) + extension


def label(text: str) -> str:
    """``text`` with every non-alphanumeric character removed (a valid BIDS entity value),
    e.g. ``cross-image`` -> ``crossimage``."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def desc_label(model: str, stream: str = "", layer: int | None = None) -> str:
    """Alphanumeric desc label, e.g. ``clipvitb32Image07`` or ``tinyclipCrossText``."""
    label = re.sub(r"[^A-Za-z0-9]", "", model).lower()
    label += "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]", stream) if w)
    return label + (f"{layer:02d}" if layer is not None else "")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    An OSError in the block (e.g. no space left on device) becomes an :class:`OutputError`
    naming ``path``; the temporary file is removed, ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write here: {exc}", path.parent) from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared files
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, read-only file system: nothing is left behind
        raise OutputError(f"cannot write the file: {exc.strerror or exc}", path) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path, data) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def write_tsv(path, table: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return Path(path)


def save_image(path, img) -> Path:
    """Save a nibabel image at ``path`` (a ``.nii.gz`` name) through a temporary name."""
    with atomic_path(path) as tmp:
        staged = str(tmp) + ".nii.gz"  # nibabel picks the format from the extension
        try:
            nib.save(img, staged)
            os.replace(staged, tmp)
        finally:
            if os.path.exists(staged):
                os.unlink(staged)
    return Path(path)


def write_map(path, values: np.ndarray, mask_img, sidecar: dict) -> Path:
    """Write (V,) in-mask ``values`` as a 3D NIfTI, or (K, V) as a 4D one (+ JSON sidecar)."""
    save_image(path, masking.unmask(np.asarray(values, dtype=np.float32), mask_img))
    write_json(str(path).replace(".nii.gz", ".json"), sidecar)
    return Path(path)


def write_sparse(path, entries: dict, attrs: dict) -> Path:
    """HDF5 with one 1-D dataset per key of ``entries`` (gzip) and file attributes ``attrs``."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            for key, value in entries.items():
                value = np.asarray(value)
                if value.dtype.kind in "UO":
                    value = value.astype(h5py.string_dtype())
                h5.create_dataset(key, data=value, compression="gzip" if value.size else None)
            for key, value in attrs.items():
                h5.attrs[key] = value
    return Path(path)


def dataset_description(bids_dir, container: str | None = None) -> dict:
    """The derivative dataset's description (GeneratedBy bids_vlm, SourceDatasets the input)."""
    generated = {"Name": "bids_vlm", "Version": __version__}
    if container:
        generated["Container"] = {"Type": container}
    source = {"URL": f"file://{Path(bids_dir).resolve()}"}
    desc_file = Path(bids_dir) / "dataset_description.json"
    if desc_file.is_file():
        with contextlib.suppress(ValueError):
            doi = json.loads(desc_file.read_text()).get("DatasetDOI")
            if doi:
                source["DOI"] = doi
    return {"Name": "bids_vlm: artificial-neuron to voxel associations of vision-language models",
            "BIDSVersion": "1.9.0", "DatasetType": "derivative", "GeneratedBy": [generated],
            "SourceDatasets": [source]}


def init_output(output_dir, bids_dir) -> Path:
    """Create the derivative dataset root with its description and .bidsignore."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory: {exc}", out) from exc
    container = "docker" if Path("/.dockerenv").exists() else (
        "singularity" if os.environ.get("SINGULARITY_NAME") else None)
    write_json(out / "dataset_description.json", dataset_description(bids_dir, container))
    with atomic_path(out / ".bidsignore") as tmp:
        tmp.write_text(BIDSIGNORE)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(README)
    return out
