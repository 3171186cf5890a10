"""Reading and writing BIDS-Derivatives files: sidecars, tables, maps, atomic writes, the dataset
description (file names: :mod:`bids_vlm.names`).

Every file is written under a temporary name in its final folder and renamed into place, so an
interrupted run never leaves a half-written output.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import masking

from bids_vlm import __version__
from bids_vlm.atomic import atomic_path
from bids_vlm.errors import DataError, OutputError
from bids_vlm.names import parse_name
from bids_vlm.brainmask import brain_models, map_name
from bids_vlm.cifti import write_dscalar

# CIFTI time series: the BIDS schema has no rule for them yet (the validator flags fMRIPrep's
# own *_space-fsLR_den-91k_bold.dtseries.nii alike)
BIDSIGNORE = ("*_statmap.nii.gz\n*_statmap.dscalar.nii\n*_statmap.json\n"
              "*_bold.dtseries.nii\n*den-*bold.json\n*_neurons.tsv\n*_neurons.json\n"
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


TEMPORARY_RE = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9.]+)?$")
SHARED_TEMPORARY_AGE_S = 600  # a shared file's temporary this old is no run's current write


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary of :func:`atomic_path` (``.<name>.<random>.tmp``), with
    the extension a writer adds to it (``.tmp.nii.gz``, ``.tmp.png``), or of the group maps
    (``.<name>.tmp.nii.gz``); no output's name starts with a dot."""
    return bool(TEMPORARY_RE.match(name))


def remove_stale_temporaries(output_dir, key: str) -> list[Path]:
    """Remove the temporaries that a killed run left among the outputs of ``key``
    (``sub-<label>`` or ``group``); call it holding ``key``'s lock (:mod:`bids_vlm.locks`),
    so that no live run is writing them. Temporaries of the files every run writes (the
    dataset description, .bidsignore, README.md, logs/config_*.toml) are removed once older
    than :data:`SHARED_TEMPORARY_AGE_S`. Returns the removed paths."""
    out = Path(output_dir)
    found = [p for p in (out / key).rglob(".*") if is_temporary(p.name)]
    found += [p for p in out.glob(f".{key}.html.*") if is_temporary(p.name)]
    found += [p for p in (out / "logs").glob(f".{key}_*") if is_temporary(p.name)]
    shared = [p for pattern in (".dataset_description.json.*", ".bidsignore.*", ".README.md.*")
              for p in out.glob(pattern)] + list((out / "logs").glob(".config_*"))
    now = time.time()
    for path in shared:
        with contextlib.suppress(OSError):
            if is_temporary(path.name) and now - path.stat().st_mtime > SHARED_TEMPORARY_AGE_S:
                found.append(path)
    removed = []
    for path in sorted(set(found)):
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove a temporary file of an interrupted run: "
                              f"{exc.strerror or exc}", path) from exc
    return removed


def write_json(path, data) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def write_tsv(path, table: pd.DataFrame) -> Path:
    """A table as BIDS TSV: tab-separated, missing values as ``n/a`` (read back by
    :func:`read_tsv`)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return Path(path)


def read_tsv(path) -> pd.DataFrame:
    """A table :func:`write_tsv` wrote: ``n/a`` is missing and no other string is (a network
    named "NA" or "null" stays a name)."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def sidecar_path(path) -> Path:
    """The JSON sidecar of a derivative file (a map, ``.nii.gz`` / ``.nii`` / CIFTI, or a
    table)."""
    name = str(path)
    for ext in (*IMAGE_EXTENSIONS, ".tsv"):
        if name.endswith(ext):
            return Path(name[:-len(ext)] + ".json")
    return Path(path).with_suffix(".json")


def read_sidecar(path, required: bool = True) -> dict:
    """The JSON sidecar of the derivative file ``path``; when it is missing, a DataError
    naming it (``required``) or {}."""
    side = sidecar_path(path)
    if not side.is_file():
        if required:
            raise DataError("the JSON sidecar of this file is missing", side)
        return {}
    return json.loads(side.read_text())


IMAGE_EXTENSIONS = (".dtseries.nii", ".dscalar.nii", ".dlabel.nii", ".nii.gz", ".nii")


def save_image(path, img) -> Path:
    """Save a nibabel image at ``path`` (a ``.nii.gz`` name, or a CIFTI ``.dtseries.nii`` /
    ``.dscalar.nii``) through a temporary name."""
    ext = next((e for e in IMAGE_EXTENSIONS if str(path).endswith(e)), ".nii.gz")
    with atomic_path(path) as tmp:
        staged = str(tmp) + ext  # nibabel picks the format from the extension
        try:
            nib.save(img, staged)
            os.replace(staged, tmp)
        finally:
            if os.path.exists(staged):
                os.unlink(staged)
    return Path(path)


def write_map(path, values: np.ndarray, mask_img, sidecar: dict) -> Path:
    """Write (V,) in-mask ``values`` as a 3D NIfTI, or (K, V) as a 4D one (+ JSON sidecar).
    On grayordinates (a CIFTI ``mask_img``) the map is ``<path without .nii.gz>.dscalar.nii``
    with the mask's brain models, its maps named after the ``stat`` entity (``_<k>`` for K > 1);
    returns the path written."""
    values = np.asarray(values, dtype=np.float32)
    if isinstance(mask_img, nib.Cifti2Image):
        path = Path(map_name(path, mask_img))
        name = parse_name(path.name)
        stem = name.get("stat") or name.suffix if name else path.name.split("_")[-1].split(".")[0]
        names = [stem] if values.ndim == 1 else [f"{stem}_{k}" for k in range(len(values))]
        write_dscalar(path, values, names, brain_models(mask_img))
        write_json(str(path)[:-len(".dscalar.nii")] + ".json", sidecar)
        return path
    save_image(path, masking.unmask(values, mask_img))
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
