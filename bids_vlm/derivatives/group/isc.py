"""Group level: the across-subjects (inter-subject) noise ceiling of the encoding.

It needs the participants' cleaned BOLD (``--save-cleaned`` at the participant level,
:mod:`bids_vlm.derivatives.participant.cleaned`). For each task, acquisition and space, the participants
whose runs have the same stimulus-sequence signatures, in the same order, are the repeats of
NSD's ncsnr (:func:`bids_vlm.encoding.noise_ceiling.intersubject_ceiling`); with at least
:data:`MIN_SUBJECTS` of them, on one grid, the group level writes
``group_<task...>_desc-isc_stat-{rceiling,ncsnr}_statmap.nii.gz`` over the voxels inside every
used participant's mask, and, for each layer's ``stat-meanencodingr`` map of the same task and
space, that mean held-out r as a fraction of the ceiling (``stat-meanencodingrfrac``).
Otherwise it logs (INFO) why and writes nothing for it.
"""
from __future__ import annotations

import json
import logging
import zlib
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn import masking

from bids_vlm.derivatives.io import sidecar_path, write_map
from bids_vlm.design.bold import FRAMES, masked_series
from bids_vlm.names import parse_name
from bids_vlm.encoding import noise_ceiling as nc
from bids_vlm.errors import DataError
from bids_vlm import cifti
from bids_vlm.analysis.group import matching_participants

LOGGER = logging.getLogger("bids_vlm")
MIN_SUBJECTS = 3
CEILING_MIN = 0.1  # as the participant level: no fraction where the ceiling on r is below this


def collect_cleaned(output_dir) -> dict:
    """{name stem without sub/ses/run (e.g. ``task-movie_space-MNI152NLin2009cAsym``):
    {subject: [(signature, path), ...] in session and run order}}."""
    found = defaultdict(lambda: defaultdict(list))
    for path in sorted(p for ext in (".nii.gz", ".dtseries.nii") for p in
                       Path(output_dir).glob(f"sub-*/**/func/*_desc-cleaned_bold{ext}")):
        name = parse_name(path.name)
        if not (name and name.get("sub") and name.get("task") and name.get("desc") == "cleaned"
                and name.suffix == "bold" and (name.get("run") or "0").isdigit()):
            continue
        side = sidecar_path(path)
        try:
            signature = json.loads(side.read_text())["RunSignature"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"the sidecar of this cleaned BOLD has no RunSignature ({exc})",
                            side) from exc
        stem = name.rest("sub", "ses", "run", "desc")
        order = (name.get("ses") or "", int(name.get("run") or 0))
        found[stem][name.get("sub")].append((order, signature, path))
    return {stem: {sub: [(sig, p) for _, sig, p in sorted(runs)] for sub, runs in subs.items()}
            for stem, subs in found.items()}


def combine_isc(output_dir) -> list[Path]:
    """The across-subjects ceiling maps (and fractions) under ``<output_dir>/group/``."""
    cleaned = collect_cleaned(output_dir)
    if not cleaned:
        LOGGER.info("across-subjects noise ceiling not computed: no participant's cleaned BOLD "
                    "in %s (run the participant level with --save-cleaned)", output_dir)
        return []
    written = []
    for stem, by_subject in cleaned.items():
        subjects = matching_participants(by_subject)
        if len(subjects) < MIN_SUBJECTS:
            LOGGER.info("across-subjects noise ceiling not computed for %s: %d participant(s) "
                        "with cleaned BOLD of the same stimulus sequence, it needs >= %d",
                        stem, len(subjects), MIN_SUBJECTS)
            continue
        written += _write_isc(Path(output_dir) / "group", stem,
                              {s: [p for _, p in by_subject[s]] for s in subjects})
    return written


def _write_isc(out, stem, paths: dict) -> list[Path]:
    """paths: {subject: [cleaned run paths, in order]} of the matching participants."""
    ceiling_of = _grayordinate_ceiling if str(paths[next(iter(paths))][0]).endswith(
        ".dtseries.nii") else _volume_ceiling
    found = ceiling_of(paths)
    if found is None:
        LOGGER.info("across-subjects noise ceiling not computed for %s: the participants' "
                    "masks do not overlap", stem)
        return []
    ceiling, mask, run_lengths = found
    side = {"NoiseCeilingMethod": nc.isc_method_description(len(paths), sum(run_lengths)),
            "Participants": sorted(paths), "Frames": int(sum(run_lengths)),
            "RunLengths": run_lengths,
            "Sources": [str(p) for ps in paths.values() for p in ps]}
    written = [write_map(out / f"group_{stem}_desc-isc_stat-{stat}_statmap.nii.gz", values, mask,
                         dict(side, Statistic=stat, Units=units, Description=text))
               for stat, values, units, text in [
                   ("rceiling", ceiling.r, "r", "across-subjects noise ceiling of the held-out "
                    "Pearson r on one participant's run"),
                   ("ncsnr", ceiling.ncsnr, "ratio", "noise-ceiling signal-to-noise ratio "
                    "with the participants as the repeats")]]
    return written + _fractions(out, stem, ceiling.r, mask)


def _on_mask(img, mask):
    """(V,) a group map's values on the ceiling's voxels / grayordinates, or None when it is
    on another grid."""
    if isinstance(mask, nib.Cifti2Image):
        rows = cifti.match_rows(mask.header.get_axis(1), img.header.get_axis(1))
        return None if (rows < 0).any() else np.asarray(img.dataobj, np.float64)[0, rows]
    if img.shape[:3] != mask.shape[:3] or not np.allclose(img.affine, mask.affine, atol=1e-3):
        return None
    return masking.apply_mask(img, mask)


def _streamed(paths: dict, read):
    """The across-subjects ceiling of the participants' runs, read one file at a time (run 1
    of every participant, then run 2, ...): read(path, first) -> (L, V) series over the
    columns that the first file (first=True) defines. Returns (the ceiling over the columns
    that are not all zero in any run, those columns (V,) bool, the run lengths), or None when
    no column is."""
    subjects = list(paths)
    shared = inside = None
    run_lengths = []
    for run in range(len(paths[subjects[0]])):
        for sub in subjects:
            try:
                series = read(paths[sub][run], shared is None)
            except (EOFError, OSError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
                raise DataError(f"cannot read this cleaned BOLD (truncated or corrupted?): "
                                f"{exc}", paths[sub][run]) from exc
            if shared is None:
                shared, inside = nc.SharedCeiling(series.shape[1]), np.ones(series.shape[1], bool)
            if len(run_lengths) == run:
                run_lengths.append(series.shape[0])
            elif series.shape[0] != run_lengths[run]:
                raise DataError(f"this cleaned run has {series.shape[0]} frames, the same run of "
                                f"participant {subjects[0]} {run_lengths[run]}", paths[sub][run])
            inside &= series.any(axis=0)
            shared.add(series)
            del series
        shared.end_run()
    if not inside.any():
        return None
    ceiling = shared.result()
    return (nc.NoiseCeiling(r=ceiling.r[inside], ncsnr=ceiling.ncsnr[inside],
                            groups=ceiling.groups), inside, run_lengths)


def _volume_ceiling(paths: dict):
    """(the ceiling over the voxels inside every participant's mask, that mask, the run
    lengths), or None when the masks do not overlap. The cleaned BOLD is 0 outside a
    participant's mask; one participant's run is in memory at a time."""
    reference = nib.load(paths[next(iter(paths))][0])
    columns = {}

    def read(path, first):
        img = nib.load(path, keep_file_open=True)  # read in blocks of frames
        if img.ndim != 4 or img.shape[:3] != reference.shape[:3] or not np.allclose(
                img.affine, reference.affine, atol=1e-3):
            raise DataError("participants' cleaned BOLD are on different grids, or not 4D; "
                            "an across-subjects ceiling needs one template space", path)
        if first:  # the voxels of the first run: a superset of every mask's overlap
            columns["mask"] = nib.Nifti1Image(_nonzero(img).astype(np.uint8), reference.affine)
        if not np.asarray(columns["mask"].dataobj).any():  # nothing can overlap
            return np.zeros((img.shape[3], 0), np.float32)
        return masked_series(img, columns["mask"])

    found = _streamed(paths, read)
    if found is None:
        return None
    ceiling, inside, run_lengths = found
    grid = np.asarray(columns["mask"].dataobj).astype(bool)
    voxels = np.flatnonzero(grid)  # C order, as the masked series' columns
    grid.flat[voxels[~inside]] = False
    return ceiling, nib.Nifti1Image(grid.astype(np.uint8), reference.affine), run_lengths


def _nonzero(img) -> np.ndarray:
    """(X, Y, Z) bool: the voxels of a 4D image that are not 0 in every frame, read
    :data:`~bids_vlm.design.bold.FRAMES` frames at a time."""
    inside = np.zeros(img.shape[:3], bool)
    for start in range(0, img.shape[3], FRAMES):
        inside |= np.asanyarray(img.dataobj[..., start:start + FRAMES]).any(axis=3)
    return inside


def _grayordinate_ceiling(paths: dict):
    """:func:`_volume_ceiling` for cleaned CIFTI time series: the grayordinates that are not
    all zero in any run (the participants' brain models must be the same)."""
    reference = []

    def read(path, first):
        run = cifti.read_dtseries(path)
        if not reference:
            reference.append(run.brain_models)
        elif run.brain_models != reference[0]:
            raise DataError("participants' cleaned BOLD are on different grayordinates; "
                            "an across-subjects ceiling needs one density", path)
        return run.data

    found = _streamed(paths, read)
    if found is None:
        return None
    ceiling, inside, run_lengths = found
    mask = cifti.dscalar_image(np.ones((1, int(inside.sum())), np.float32), ["mask"],
                               reference[0][np.flatnonzero(inside)])
    return ceiling, mask, run_lengths


def _fractions(out, stem, ceiling, mask) -> list[Path]:
    """Each layer's mean held-out encoding r (same task and space) / the ceiling."""
    written = []
    ext = ".dscalar.nii" if isinstance(mask, nib.Cifti2Image) else ".nii.gz"
    for path in sorted(out.glob(f"group_{stem}_desc-*_stat-meanencodingr_statmap{ext}")):
        r = _on_mask(nib.load(path), mask)
        if r is None:
            continue
        side = json.loads(Path(str(path)[:-len(ext)] + ".json").read_text())
        side.update(Statistic="meanencodingrfrac", Units="fraction", Description=(
            "mean over participants of the layer's held-out encoding r (stat-meanencodingr) "
            f"divided by the across-subjects noise ceiling (desc-isc_stat-rceiling); NaN "
            f"where the ceiling is <= {CEILING_MIN}; 0 outside the voxels in every participant's "
            "mask"))
        target = Path(str(path).replace("stat-meanencodingr_", "stat-meanencodingrfrac_")
                      .replace(".dscalar.nii", ".nii.gz"))  # write_map names it
        written.append(write_map(target, nc.fraction_of_ceiling(r, ceiling, CEILING_MIN), mask,
                                 side))
    return written
