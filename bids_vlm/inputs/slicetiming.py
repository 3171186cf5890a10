"""The time within each volume that a run's data represent (stage 1, from the JSON sidecars):
regressors are sampled at ``arange(n_scans) * tr + slice_time_ref``."""
from __future__ import annotations

import json
import logging

import numpy as np

from bids_vlm.errors import DataError

LOGGER = logging.getLogger("bids_vlm.inputs.bids")


def slice_time_reference(image_meta: dict, raw_meta: dict, tr: float, image,
                         sidecar=None, raw_sidecar=None) -> float:
    """Seconds from the onset of a volume to the time its data represent (>= 0, < TR).

    The frame times of a run are ``arange(n_scans) * tr + slice_time_ref``
    (:func:`bids_vlm.design.regressors.frame_times`), nilearn's ``frame_times`` with
    ``slice_time_ref`` (there a fraction of the TR) times the TR. In order:

    1. The analysed image's sidecar says ``SliceTimingCorrected: true`` (fMRIPrep writes it, with
       ``StartTime``, when it corrected slice timing): ``StartTime``, the time of the reference
       slice every slice was shifted to (fMRIPrep: ``min + slice_time_ref * (max - min)`` of
       ``SliceTiming``, the middle of the acquisition by default). Without ``StartTime`` (another
       pipeline), a warning and the middle of the raw ``SliceTiming`` range, fMRIPrep's default
       reference (0.0 when there is no ``SliceTiming`` either).
    2. Not corrected (``SliceTimingCorrected`` false or absent, raw or preprocessed image) and
       the raw BOLD has ``SliceTiming`` (per-slice onsets in seconds, BIDS inheritance): the
       mean slice time. Each slice is then sampled at its own time; one reference for the whole
       volume is best put at the average slice time, which minimizes the mean squared timing
       error over slices. It is about TR/2 for a continuous (ascending, descending or
       interleaved) acquisition, the "half a TR" convention, and stays right for a sparse
       acquisition (slices packed at the start of the TR, a silent gap after), where TR/2 is
       too late. (An older fMRIPrep that corrected slice timing without writing
       ``SliceTimingCorrected`` referenced the middle of the acquisition, which this matches
       for a continuous acquisition.)
    3. No slice-timing information: 0.0, the volume onset (nilearn's default), logged at INFO.

    ``sidecar(key)`` / ``raw_sidecar(key)`` name the JSON file that holds ``key`` in the image's
    / the raw BOLD's metadata (for error messages; ``image`` otherwise). DataError naming that
    file and the key when a value is not a finite number of seconds in [0, TR), or
    ``SliceTimingCorrected`` is not a boolean.
    """
    def where(key, raw=False):
        find = raw_sidecar if raw else sidecar
        return (find(key) if find else None) or image

    corrected = image_meta.get("SliceTimingCorrected")
    if corrected is not None and not isinstance(corrected, bool):
        raise DataError(f"SliceTimingCorrected must be true or false, not "
                        f"{json.dumps(corrected)}", where("SliceTimingCorrected"))
    if corrected and "StartTime" in image_meta:
        return _time_in_volume(image_meta["StartTime"], tr, "StartTime", where("StartTime"))
    slice_times = _slice_timing(raw_meta.get("SliceTiming"), tr, where("SliceTiming", raw=True))
    if corrected:
        ref = (min(slice_times) + max(slice_times)) / 2 if slice_times else 0.0
        LOGGER.warning("%s: SliceTimingCorrected is true but StartTime (the reference time of "
                       "the correction) is missing; assuming %g s (%s)", image, ref,
                       "the middle of SliceTiming, fMRIPrep's default" if slice_times
                       else "no SliceTiming either: the volume onset")
        return ref
    if slice_times:
        return float(np.mean(slice_times))
    LOGGER.info("%s: no slice timing information (SliceTimingCorrected/StartTime or "
                "SliceTiming in the JSON sidecars); the frame times are the volume onsets",
                image)
    return 0.0


def _slice_timing(value, tr: float, path) -> list[float]:
    """The checked ``SliceTiming`` list in seconds ([] when absent or empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"SliceTiming must be a list of seconds in the JSON sidecar, not "
                        f"{json.dumps(value)}", path)
    return [_time_in_volume(v, tr, "SliceTiming", path) for v in value]


def _time_in_volume(value, tr: float, key: str, path) -> float:
    """``value`` as seconds within a volume: a finite JSON number, >= 0 and < TR."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{key} must be a number of seconds in the JSON sidecar, not "
                        f"{json.dumps(value)}", path)
    seconds = float(value)
    if not np.isfinite(seconds) or seconds < 0 or seconds >= tr:
        hint = "; milliseconds? BIDS wants seconds" if np.isfinite(seconds) and seconds > 0 else ""
        raise DataError(f"{key} {value} in the JSON sidecar is not a time within a volume "
                        f"(seconds, >= 0 and < RepetitionTime {tr:g}){hint}", path)
    return seconds
