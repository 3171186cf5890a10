"""Stage 1 (with :mod:`bids_vlm.inputs.bids`): find the fMRIPrep outputs of the raw runs.

Derivative datasets are the folders given with ``--derivatives``, or, by default, every folder
below ``<bids_dir>/derivatives/`` (at any depth up to :data:`MAX_DEPTH`, e.g.
``derivatives/fmriprep`` or ``derivatives/<anything>/fmriprep``) that holds ``sub-<label>``
folders. A folder without ``dataset_description.json`` is used, with a warning. Their files are
indexed by name with pybids' :func:`~bids.layout.parse_file_entities`, not by a pybids layout,
which refuses a derivative without a description. Names of fMRIPrep >= 1.2
(``_space-X_desc-preproc_bold.nii.gz``, ``_space-X_desc-brain_mask.nii.gz``,
``_desc-confounds_timeseries.tsv`` or ``_regressors.tsv``) and of fMRIPrep 1.0-1.1
(``_bold_space-X_preproc.nii.gz``, ``_bold_space-X_brainmask.nii.gz``, ``_bold_confounds.tsv``)
are read. Run entities are compared as numbers where both are numbers (``run-1`` is
``run-01``). CIFTI outputs (``_space-fsLR_den-91k_bold.dtseries.nii``, fMRIPrep's
``--cifti-output``, HCP-style and ciftify derivatives) are used when ``--space`` names their
space (``fsLR``, optionally with a density: ``fsLR:den-91k``, as fMRIPrep's ``--output-spaces``
writes it, or ``--cifti-density 91k``). Their sidecar is ``X_bold.json``, or the
``X_bold.dtseries.json`` of fMRIPrep <= 20.x (whose keys pybids rejects when it indexes
metadata; read here as plain JSON).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bids_vlm.errors import NoInputError

LOGGER = logging.getLogger("bids_vlm.inputs.bids")

# Entities that identify a run; derivative files match a run when every one they carry agrees.
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "direction",
                "reconstruction", "run", "echo")
# Preferred template spaces, in order, when several preprocessed spaces are present.
SPACE_PREFERENCE = ("MNI152NLin2009cAsym", "MNI152NLin6Asym", "MNI152NLin2009cSym", "T1w", "func")
MAX_DEPTH = 4  # folders below derivatives/ searched for derivative datasets
KINDS = ("bold", "mask", "confounds", "cifti")
NO_SPACE = object()  # want_space: only files without a space entity (the raw BOLD's own space)


@dataclass(frozen=True)
class DerivativeFile:
    """One indexed derivative file: its path, kind (:data:`KINDS`) and entities (run
    entities and ``space``, as (key, value) pairs)."""

    path: str
    kind: str
    entities: tuple

    @property
    def ents(self) -> dict:
        return dict(self.entities)


@dataclass(frozen=True)
class DerivativeIndex:
    """The derivative datasets found (``roots``) and their indexed files."""

    roots: tuple = ()
    files: tuple = ()

    def spaces(self, kinds=("bold", "cifti")) -> list:
        """Sorted spaces of the indexed files of ``kinds`` ('' for no space entity)."""
        return sorted({f.ents.get("space", "") for f in self.files if f.kind in kinds})


def find_derivatives(bids_dir, given=()) -> DerivativeIndex:
    """The derivative datasets of ``given`` folders, or below ``<bids_dir>/derivatives/``,
    indexed (module doc)."""
    folders = [Path(g).resolve() for g in given]
    if not folders:
        folders = [Path(bids_dir) / "derivatives"] if (Path(bids_dir) / "derivatives").is_dir() \
            else []
    roots = [r for folder in folders for r in dataset_roots(folder)]
    files = []
    for root in roots:
        found = index_files(root)
        if found and not (root / "dataset_description.json").is_file():
            LOGGER.warning("%s: derivative folder without dataset_description.json; using its "
                           "preprocessed files anyway", root)
        files.extend(found)
    return DerivativeIndex(tuple(str(r) for r in roots), tuple(files))


def dataset_roots(folder: Path, depth: int = MAX_DEPTH) -> list:
    """Folders at or below ``folder`` (``depth`` levels at most, hidden ones skipped) that hold
    ``sub-<label>`` folders; a root's own subfolders are not searched further."""
    try:
        children = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    except OSError:
        return []
    if any(p.name.startswith("sub-") for p in children):
        return [Path(folder)]
    if depth <= 0:
        return []
    return [r for child in children if not child.name.startswith(".")
            for r in dataset_roots(child, depth - 1)]


def index_files(root: Path) -> list:
    """The :class:`DerivativeFile` s of one derivative dataset, sorted by path."""
    from bids.layout import parse_file_entities  # pybids takes ~1 s to import

    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("sub-"):
                continue
            path = os.path.join(folder, name)
            ents = parse_file_entities(path)
            kind = file_kind(name, ents)
            if kind:
                keep = {k: str(v) for k, v in ents.items()
                        if k in RUN_ENTITIES + ("space", "den")}
                out.append(DerivativeFile(path, kind, tuple(sorted(keep.items()))))
    return out


def file_kind(name: str, ents: dict) -> str | None:
    """What a derivative file is (:data:`KINDS`), by its name and parsed entities, or None."""
    suffix, desc, ext = ents.get("suffix"), ents.get("desc"), ents.get("extension", "")
    if ext == ".dtseries.nii" and suffix == "bold":
        return "cifti"
    if ext in (".nii", ".nii.gz"):
        if (suffix, desc) == ("bold", "preproc") or (suffix == "preproc" and "_bold_" in name):
            return "bold"
        if (suffix, desc) == ("mask", "brain") or (suffix == "brainmask" and "_bold_" in name):
            return "mask"
    if ext == ".tsv" and ((suffix in ("timeseries", "regressors") and desc == "confounds")
                          or (suffix == "confounds" and "_bold_" in name)):
        return "confounds"
    return None


def same_value(a, b) -> bool:
    """Entity values agree: as numbers where both are numbers (``01`` is ``1``)."""
    a, b = str(a), str(b)
    if a.isdigit() and b.isdigit():
        return int(a) == int(b)
    return a == b


def match(index: DerivativeIndex, ents: dict, kind: str, space: str = "",
          want_space=None) -> DerivativeFile | None:
    """The file of ``kind`` whose run entities all agree with the raw run's ``ents`` (most
    specific wins; then the requested ``space``, then :data:`SPACE_PREFERENCE`).
    want_space: a space the file must have, or :data:`NO_SPACE` for none."""
    scored = []
    for cand in (f for f in index.files if f.kind == kind):
        c_ents = cand.ents
        if any(k in c_ents and not same_value(c_ents[k], ents.get(k)) for k in RUN_ENTITIES):
            continue
        if want_space is NO_SPACE and "space" in c_ents:
            continue
        if want_space not in (None, NO_SPACE) and c_ents.get("space") != want_space:
            continue
        score = sum(k in c_ents for k in RUN_ENTITIES)
        scored.append((score, -space_rank(c_ents.get("space"), space), cand.path, cand))
    return max(scored, key=lambda s: s[:3])[3] if scored else None


def split_space(spec: str) -> tuple[str, str]:
    """(space, density) of a ``--space`` value: ``fsLR:den-91k`` -> ('fsLR', '91k');
    ``MNI152NLin2009cAsym`` -> ('MNI152NLin2009cAsym', '')."""
    space, _, rest = str(spec or "").partition(":")
    return space, rest[len("den-"):] if rest.startswith("den-") else rest


def cifti_spaces(index: DerivativeIndex) -> list:
    """The spaces (with densities) of the CIFTI time series indexed, e.g. ['fsLR:den-91k']."""
    return sorted({_spec(f) for f in index.files if f.kind == "cifti"})


def _spec(f: DerivativeFile) -> str:
    ents = f.ents
    return ents.get("space", "") + (f":den-{ents['den']}" if "den" in ents else "")


def wants_cifti(index: DerivativeIndex, spec: str) -> bool:
    """``--space`` asks for CIFTI time series: it names a density, or no preprocessed volume
    has its space."""
    space, density = split_space(spec)
    return bool(space) and (bool(density) or not any(
        f.kind == "bold" and f.ents.get("space") == space for f in index.files))


def match_cifti(index: DerivativeIndex, ents: dict, spec: str) -> DerivativeFile | None:
    """The CIFTI time series (``*_bold.dtseries.nii``) of the run ``ents`` in the space of
    ``spec`` (and its density, when the spec names one)."""
    space, density = split_space(spec)
    found = [f for f in index.files if f.kind == "cifti" and f.ents.get("space") == space
             and (not density or f.ents.get("den") == density)]
    return match(DerivativeIndex(index.roots, tuple(found)), ents, "cifti")


def space_rank(found, wanted) -> int:
    """Position of a space in the preference (the requested one first)."""
    if wanted and found == wanted:
        return -1
    if found in SPACE_PREFERENCE:
        return SPACE_PREFERENCE.index(found)
    return len(SPACE_PREFERENCE)


def check_space(index: DerivativeIndex, space: str, root) -> None:
    """NoInputError (exit 65) naming the spaces found when ``space`` was asked for and no
    preprocessed BOLD has it."""
    name, density = split_space(space)
    if not space or not wants_cifti(index, space):
        return
    if any(_spec(f) == space or (not density and f.ents.get("space") == name)
           for f in index.files if f.kind == "cifti"):
        return
    found = sorted({f.ents.get("space", "") for f in index.files if f.kind == "bold"})
    cifti = cifti_spaces(index)
    note = f"; CIFTI time series (.dtseries.nii): {', '.join(cifti)}" if cifti else ""
    where = ", ".join(index.roots) or f"no derivative dataset under {Path(root) / 'derivatives'}"
    raise NoInputError(f"--space {space}: no preprocessed BOLD in that space (spaces found: "
                       f"{', '.join(s or 'none' for s in found) or 'none'}; in {where}){note}",
                       root)


def why_not_preprocessed(index: DerivativeIndex, ents: dict, space: str = "") -> str:
    """Why no preprocessed BOLD matched a raw run (``ents``): no derivative dataset, none for
    the subject, or the entities in which the closest candidate differs."""
    if not index.roots:
        return "no derivative dataset found (fMRIPrep outputs go below derivatives/)"
    same_sub = [f for f in index.files if f.kind == "bold"
                and same_value(f.ents.get("subject"), ents.get("subject"))]
    if not same_sub:
        return (f"no preprocessed BOLD of sub-{ents.get('subject')} in "
                f"{', '.join(index.roots)}")

    def differing(f):
        c = f.ents
        return [k for k in RUN_ENTITIES if (k in c) != (k in ents)
                or (k in c and not same_value(c[k], ents[k]))]
    this_run = sorted({f.ents.get("space", "none") for f in same_sub if not differing(f)})
    if this_run:
        return f"no preprocessed BOLD of this run in space {space} (it has: {', '.join(this_run)})"
    best = min(same_sub, key=lambda f: (len(differing(f)), f.path))
    diffs = ", ".join(f"{k} {best.ents.get(k, '(none)')} vs {ents.get(k, '(none)')}"
                      for k in differing(best))
    return f"the closest preprocessed BOLD, {best.path}, differs in {diffs}"


SIDECAR_EXTENSIONS = (".dtseries.nii", ".nii.gz", ".nii", ".tsv")


def sidecar(path) -> dict:
    """The JSON sidecar beside a derivative file (:func:`sidecar_path`), or {}."""
    found = sidecar_path(path)
    try:
        return json.loads(Path(found).read_text()) if found else {}
    except (OSError, ValueError):
        return {}


def sidecar_path(path) -> str | None:
    """The path of the sidecar of a derivative file, when it exists: the same name with
    ``.json``; for a CIFTI ``X_bold.dtseries.nii``, ``X_bold.json`` or else the
    ``X_bold.dtseries.json`` that fMRIPrep <= 20.x wrote."""
    name = str(path)
    for ext in SIDECAR_EXTENSIONS:
        if name.endswith(ext):
            stem = name[:-len(ext)]
            names = [stem + ".json"] + ([stem + ".dtseries.json"] if ext == ".dtseries.nii"
                                        else [])
            return next((n for n in names if Path(n).is_file()), None)
    return None


def derivs_root(index: DerivativeIndex, path) -> str | None:
    """The derivative dataset that holds ``path``, or None."""
    for root in index.roots:
        if Path(path).is_relative_to(root):
            return root
    return None
