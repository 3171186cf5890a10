"""Stage 1: find the runs to analyse in a BIDS dataset (and its fMRIPrep derivatives) with pybids.

:func:`collect_runs` returns one :class:`RunSpec` per BOLD run: the BOLD image to analyse
(preprocessed when a derivative provides it, raw otherwise), its brain mask, confounds, events,
repetition time and slice-timing reference (:func:`slice_time_reference`: the time within each
volume that its data represent, so that regressors are sampled when the data were).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
import dataclasses
import gzip
import zlib

import nibabel as nib
import numpy as np

from bids_vlm.inputs import fmriprep
from bids_vlm.config import RunFilter, StimulusConfig
from bids_vlm.inputs.datalad import check_present
from bids_vlm.errors import DataError, NoInputError
from bids_vlm.inputs.fmriprep import NO_SPACE, DerivativeIndex, derivs_root
from bids_vlm.inputs.slicetiming import slice_time_reference
from bids_vlm import cifti
from bids_vlm.inputs.stimulus_files import stimulus_files

LOGGER = logging.getLogger("bids_vlm.inputs.bids")


@dataclass(frozen=True)
class RunSpec:
    """One BOLD run and the files that go with it. Paths are absolute strings."""

    subject: str
    session: str | None
    task: str
    run: int | None
    acquisition: str | None
    bold: str
    events: str
    tr: float
    n_scans: int
    mask: str | None = None
    confounds: str | None = None
    space: str | None = None
    density: str | None = None  # of a CIFTI time series (``den-91k``)
    preprocessed: bool = False
    # seconds from a volume's onset to the time its data represent (:func:`slice_time_reference`);
    # the frame times are ``arange(n_scans) * tr + slice_time_ref``. 0.0 (the volume onset) for
    # runs serialized before the field existed.
    slice_time_ref: float = 0.0
    fingerprint: str = ""  # changes when any input file changes (invalidates cached results)

    @property
    def label(self) -> str:
        """Short BIDS-like name, e.g. ``sub-01_ses-1_task-movie_run-1``."""
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        parts.append(f"task-{self.task}")
        if self.acquisition:
            parts.append(f"acq-{self.acquisition}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def run_from_dict(data: dict) -> RunSpec:
    return RunSpec(**data)


def strip_prefix(label: str, prefix: str = "sub-") -> str:
    """``sub-01`` and ``01`` both give ``01``."""
    return label[len(prefix):] if label.startswith(prefix) else label


@dataclass(frozen=True)
class Inputs:
    """The raw dataset (a pybids layout) and its indexed derivative datasets."""

    layout: object
    derivatives: DerivativeIndex = DerivativeIndex()

    @property
    def root(self) -> str:
        return str(self.layout.root)


def load_layout(bids_dir, derivatives=(), validate=False) -> Inputs:
    """The raw dataset's pybids layout plus its derivative datasets: the ``derivatives`` paths,
    or by default the fMRIPrep-like folders below ``bids_dir/derivatives/``
    (:func:`bids_vlm.inputs.fmriprep.find_derivatives`)."""
    from bids import BIDSLayout  # pybids takes ~1 s to import

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise DataError("not a BIDS dataset: dataset_description.json is missing", bids_dir)
    try:
        layout = BIDSLayout(str(bids_dir), validate=validate, derivatives=False)
    except Exception as exc:  # pybids raises several types for malformed datasets
        raise DataError(f"pybids cannot read the dataset: {exc}", bids_dir) from exc
    return Inputs(layout, fmriprep.find_derivatives(bids_dir, derivatives))


def collect_runs(inputs: Inputs, filters: RunFilter = RunFilter(), space: str = "") -> list[RunSpec]:
    """Every BOLD run that passes ``filters``, sorted by subject, session, task and run.
    space: the requested space of the preprocessed BOLD ('' for the preference order); one
    that no derivative has is a NoInputError naming the spaces found."""
    layout = inputs.layout
    query = _query(filters)
    _check_participants(layout, filters)
    fmriprep.check_space(inputs.derivatives, space, layout.root)
    bolds = layout.get(scope="raw", suffix="bold", extension=[".nii", ".nii.gz"], **query)
    if not bolds:
        _explain_empty(layout, filters)
    specs = [_run_spec(inputs, bold, space) for bold in sorted(bolds, key=_run_order)]
    if not any(specs):
        raise NoInputError(f"none of the {len(bolds)} selected BOLD runs has an events.tsv; "
                           "bids_vlm needs events that describe the stimuli", layout.root)
    return [s for s in specs if s is not None]


def _run_order(bold):
    ents = bold.get_entities()
    return (ents.get("subject", ""), ents.get("session") or "", ents.get("task", ""),
            ents.get("acquisition") or "", int(ents.get("run", 0) or 0), bold.path)


def _check_participants(layout, filters: RunFilter):
    known = sorted(layout.get_subjects())
    missing = [p for p in (strip_prefix(p) for p in filters.participant_label) if p not in known]
    if missing:
        raise NoInputError(f"participant(s) {', '.join(missing)} not found; the dataset has: "
                           f"{', '.join(known) or 'no subjects'}", layout.root)


def _query(filters: RunFilter) -> dict:
    query = json.loads(filters.bids_filters or "{}").get("bold", {})
    query = {k: v for k, v in query.items() if k not in ("suffix", "extension", "datatype")}
    for key, flag, values in (
            ("subject", "--participant-label", [strip_prefix(p) for p in filters.participant_label]),
            ("session", "--session-label", [strip_prefix(s, "ses-") for s in filters.session_label]),
            ("task", "--task", list(filters.task)), ("run", "--run", [int(r) for r in filters.run])):
        if values:
            if key in query:
                raise NoInputError(f"{flag} conflicts with the '{key}' in the BIDS filter file")
            query[key] = values
    return query


def _explain_empty(layout, filters: RunFilter):
    root = layout.root
    tasks = sorted(layout.get_tasks())
    raise NoInputError(f"no BOLD runs match the filters (tasks in the dataset: "
                       f"{', '.join(tasks) or 'none'}; filters: {_describe(filters)})", root)


def _describe(filters: RunFilter) -> str:
    items = {k: v for k, v in asdict(filters).items() if v and v != "{}"}
    return ", ".join(f"{k}={v}" for k, v in items.items()) or "none"


def _run_spec(inputs: Inputs, bold, space: str) -> RunSpec | None:
    layout, derivs = inputs.layout, inputs.derivatives
    ents = bold.get_entities()
    # strict: the events must not name another run or task; all_=True because pybids stops at
    # the first folder with any candidate, even one that strict matching then rejects
    found = layout.get_nearest(bold.path, suffix="events", extension=".tsv", all_=True,
                               ignore_strict_entities=["suffix", "extension", "datatype"])
    events = found[0] if found else None
    if events is None:
        LOGGER.warning("%s: no events.tsv, run skipped (events give the stimuli)", bold.path)
        return None
    if fmriprep.wants_cifti(derivs, space):
        preproc = fmriprep.match_cifti(derivs, ents, space)
        if preproc is None:
            raise NoInputError(f"--space {space}: no CIFTI time series of this run in that space "
                               f"(CIFTI found: {', '.join(fmriprep.cifti_spaces(derivs))})",
                               bold.path)
    else:
        preproc = fmriprep.match(derivs, ents, "bold", space, want_space=space or None)
    if preproc is None and space:
        raise NoInputError(f"--space {space}: {fmriprep.why_not_preprocessed(derivs, ents, space)}"
                           f" (spaces found: {', '.join(derivs.spaces()) or 'none'})", bold.path)
    if preproc is None:
        LOGGER.warning("%s: no preprocessed BOLD found in the derivatives (%s); analysing the "
                       "raw BOLD (no motion correction or normalisation)", bold.path,
                       fmriprep.why_not_preprocessed(derivs, ents, space))
    image = preproc.path if preproc else bold.path
    for path, root in ((image, derivs_root(derivs, image) or layout.root), (events, layout.root)):
        check_present(path, root)
    n_scans, header_tr = _n_scans(image)
    raw_meta = layout.get_metadata(bold.path)
    tr = repetition_time(raw_meta.get("RepetitionTime"), bold.path, header_tr, n_scans,
                         header=_HEADER_STEP[image.endswith(".dtseries.nii")])
    image_meta = fmriprep.sidecar(preproc.path) if preproc else raw_meta
    if preproc and (fmriprep.sidecar_path(preproc.path) or "").endswith(".dtseries.json"):
        LOGGER.warning("%s: fMRIPrep <= 20.x CIFTI sidecar (%s); its keys (space: HCP "
                       "grayordinates, grayordinates, surface, ...) are read as plain JSON "
                       "(pybids would reject them as an entity conflict)", preproc.path,
                       Path(fmriprep.sidecar_path(preproc.path)).name)
    slice_ref = slice_time_reference(
        image_meta, raw_meta, tr, image,
        sidecar=(lambda key: fmriprep.sidecar_path(preproc.path)) if preproc
        else (lambda key: _sidecar_with(bold, key)),
        raw_sidecar=lambda key: _sidecar_with(bold, key))
    chosen_space = preproc.ents.get("space") if preproc else None
    # raw BOLD: only a mask without a space entity (in the BOLD's own space) will do; CIFTI
    # needs none (its brain models are the grayordinates)
    mask = None if image.endswith(".dtseries.nii") else fmriprep.match(
        derivs, ents, "mask", space, want_space=chosen_space if preproc else NO_SPACE)
    confounds = fmriprep.match(derivs, ents, "confounds")
    for found in (mask, confounds):
        if found is not None:
            check_present(found.path, derivs_root(derivs, found.path))
    return RunSpec(
        subject=ents["subject"], session=ents.get("session"), task=ents["task"],
        run=int(ents["run"]) if "run" in ents else None, acquisition=ents.get("acquisition"),
        bold=image, events=events, tr=tr, n_scans=n_scans,
        mask=mask.path if mask else None, confounds=confounds.path if confounds else None,
        space=chosen_space, density=preproc.ents.get("den") if preproc else None,
        preprocessed=preproc is not None, slice_time_ref=slice_ref,
        fingerprint=_fingerprint(image, events, mask and mask.path,
                                 confounds and confounds.path,
                                 *_stimulus_files(events, layout.root),
                                 timing=(tr, slice_ref)))


def _sidecar_with(bids_file, key: str) -> str | None:
    """The nearest JSON sidecar of ``bids_file`` (BIDS inheritance) that defines ``key``."""
    try:
        sidecars = bids_file.get_associations(kind="Metadata", include_parents=True)
    except Exception:  # pybids versions differ; the message then names the image instead
        return None
    for candidate in sidecars:
        try:
            if key in json.loads(Path(candidate.path).read_text()):
                return candidate.path
        except (OSError, ValueError):
            continue
    return None


def _stimulus_files(events, root, stimuli=None) -> list:
    """The image and video files an events.tsv names (for the fingerprint), found as the
    timeline finds them (:func:`bids_vlm.inputs.stimulus_files.stimulus_files`): from the stimulus
    column(s) of ``stimuli`` (a StimulusConfig; default: detected) in its ``stimuli_dir``, by
    default ``root``/stimuli (``root``: the BIDS dataset)."""
    stimuli = stimuli or StimulusConfig()
    return stimulus_files(events, stimuli.stimuli_dir or Path(root) / "stimuli",
                          stimuli.stim_columns)


def with_stimulus_files(runs, root, stimuli) -> list:
    """``runs`` (RunSpecs of the dataset ``root``) with fingerprints that also cover the
    stimulus files their events name under the stimulus options ``stimuli`` (a
    StimulusConfig: ``--stim-column``, ``--stimuli-dir``), so that a changed stimuli folder
    or column, or a changed file in it, reruns a finished participant."""
    return [dataclasses.replace(run, fingerprint=hashlib.sha1(repr((
        run.fingerprint, _fingerprint(*_stimulus_files(run.events, root, stimuli)))).encode())
        .hexdigest()[:16]) for run in runs]


def _fingerprint(*paths, timing=()) -> str:
    """Hash of the size and modification time of the given files, and of ``timing`` (the TR
    and slice-timing reference read from the JSON sidecars, so that editing them reruns)."""
    stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths if p]
    if timing:
        stats.append(("timing", *(float(t) for t in timing)))
    return hashlib.sha1(repr(stats).encode()).hexdigest()[:16]


def _n_scans(path) -> tuple[int, float]:
    """(volumes, TR in seconds from the header's pixdim[4], 0 when it gives none) of a BOLD
    image; DataError naming it when it is unreadable, truncated, not 4D or mislocated. A CIFTI
    time series: (its frames, its series axis step in seconds)."""
    if str(path).endswith(".dtseries.nii"):
        return _cifti_frames(path)
    try:
        img = nib.load(path)
        shape = img.shape
    except Exception as exc:
        raise DataError(f"cannot read the NIfTI image: {exc}", path) from exc
    offset = getattr(img.dataobj, "offset", None) or int(img.header["vox_offset"])
    expected = int(offset) + int(np.prod(shape)) * img.get_data_dtype().itemsize
    size = os.path.getsize(path) if str(path).endswith(".nii") else _gzip_size(path, expected)
    if size < expected:  # a header-only or truncated file
        raise DataError(f"the image is truncated: {size} bytes, its header needs "
                        f"{expected}", path)
    if len(shape) != 4 or shape[3] < 2:
        raise DataError(f"BOLD must be a 4D image with at least 2 volumes, shape is {shape}", path)
    check_affine(img.affine, path)
    return int(shape[3]), _header_tr(img.header)


def _cifti_frames(path) -> tuple[int, float]:
    img = cifti._load(path, "time series")
    series = cifti._first_axis(img, cifti.axes.SeriesAxis, "a time series", ".dtseries.nii",
                               path)
    cifti.brain_models_of(img, path)
    expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    if os.path.getsize(path) < expected:
        raise DataError(f"the CIFTI file is truncated: {os.path.getsize(path)} bytes, its "
                        f"header needs {expected}", path)
    if series.size < 2:
        raise DataError(f"a CIFTI time series needs at least 2 frames, it has {series.size}",
                        path)
    step = float(series.step) if series.unit == "SECOND" and series.step > 0 else 0.0
    return int(series.size), step


def check_affine(affine, path):
    """DataError naming ``path`` when its voxel-to-world matrix is singular or not finite
    (voxels would have no position, so no mask, resampling or atlas could place them)."""
    matrix = np.asarray(affine, float)[:3, :3]
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-12:
        raise DataError("the image's affine (voxel-to-world matrix) is singular or not finite: "
                        f"{np.round(matrix, 4).tolist()}; fix the qform/sform of the header", path)


def _header_tr(header) -> float:
    """The NIfTI header's time step in seconds (pixdim[4] in its xyzt units), 0 if unknown."""
    zooms = header.get_zooms()
    step = float(zooms[3]) if len(zooms) > 3 else 0.0
    unit = header.get_xyzt_units()[1]
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    return step * scale if np.isfinite(step) and step > 0 else 0.0


MAX_TR = 100.0  # seconds; a longer RepetitionTime is taken for milliseconds


_HEADER_STEP = {False: "the NIfTI header (pixdim[4])", True: "the CIFTI series axis step"}


def repetition_time(value, path, header_tr: float = 0.0, n_scans: int = 0,
                    header: str = _HEADER_STEP[False]) -> float:
    """The sidecar's RepetitionTime in seconds, checked: a finite positive JSON number, not
    milliseconds (BIDS wants seconds), and compared with the NIfTI header's time step (a
    mismatch is a warning: the sidecar wins, as in BIDS)."""
    where = "in the JSON sidecar"
    if value is None:
        raise DataError(f"RepetitionTime is missing or not positive {where}", path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"RepetitionTime must be a number of seconds {where}, not "
                        f"{json.dumps(value)}", path)
    tr = float(value)
    if not np.isfinite(tr) or tr <= 0:
        raise DataError(f"RepetitionTime is missing or not positive {where} ({value})", path)
    said = f"; {header.split(' (')[0]} says {header_tr:g} s" if header_tr else ""
    if tr > MAX_TR:
        raise DataError(f"RepetitionTime {tr:g} {where} is not plausible in seconds "
                        f"({n_scans} volumes would last {n_scans * tr / 3600:.1f} h{said}); "
                        "milliseconds? BIDS wants seconds", path)
    if header_tr and abs(header_tr - tr) > 0.01 * tr:
        LOGGER.warning("%s: RepetitionTime %g s in the JSON sidecar but %g s in %s; using the "
                       "sidecar's", path, tr, header_tr, header)
    return tr


def _gzip_size(path, expected) -> int:
    """Uncompressed size of a .nii.gz, or ``expected`` when it is surely complete.

    Cheap check first: the gzip trailer holds the size modulo 2**32; only when it disagrees
    (a header-only or truncated file, or a multi-member gzip) is the file decompressed.
    """
    with open(path, "rb") as handle:
        handle.seek(max(os.path.getsize(path) - 4, 0))
        if int.from_bytes(handle.read(4), "little") == expected % 2**32:
            return expected
    size = 0
    try:
        with gzip.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                size += len(block)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"cannot read the image data, the file is truncated or corrupted "
                        f"({exc} after {size} bytes)", path) from exc
    return size
