"""Runs an analysis level: finds the inputs, checks them, builds and runs the Nipype graph.

This is the CLI's layer (it imports :mod:`workflows`); the stages do not import it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import tomli_w
import torch

from bids_vlm import __version__, errors, locks
from bids_vlm.config import AnalysisConfig, Execution, to_dict, write_execution
from bids_vlm.errors import BidsVlmError, NoInputError, DataError
from bids_vlm.analysis.atlases import SURFACE_SHIPPED, load_surface_networks, atlas_digest
from bids_vlm.derivatives import atomic_path, init_output
from bids_vlm.derivatives.io import remove_stale_temporaries
from bids_vlm.design.bold import SMOOTHING_REFUSED
from bids_vlm.design.cleaning import read_confounds, removed_dimensions
from bids_vlm.finished import mark_finished, participant_fingerprint, is_finished, marker_path
from bids_vlm.inputs.bids import collect_runs, load_layout, with_stimulus_files
from bids_vlm.inputs.stimuli import build_timeline, read_events, sample_items
from bids_vlm.inputs.stimulus_checks import inspect_run, log_stimuli, no_stimulus_hint
from bids_vlm.inputs.timeline_summary import log_summary, summarise
from bids_vlm.inputs.units import unit_label, analysis_units
from workflows.group import init_group_wf
from workflows.participant import init_participant_wf, node_config

LOGGER = logging.getLogger("bids_vlm")


def default_work_dir(output_dir) -> Path:
    """A stable work directory for an output directory (so that a rerun resumes)."""
    digest = hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"bids_vlm_work_{digest}"


def write_config_log(output_dir, config: AnalysisConfig, level, extra: dict,
                     execution: Execution | None = None) -> Path:
    """The resolved configuration as TOML in ``logs/`` (and how the run executed, in its
    ``[execution]`` table)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(output_dir) / "logs" / f"config_{level}_{stamp}.toml"
    data = {"bids_vlm": {"version": __version__, "level": level,
                         "command": " ".join(sys.argv), **extra}, **to_dict(config)}
    if execution is not None:
        data["execution"] = dataclasses.asdict(execution)
    with atomic_path(path) as tmp:
        tmp.write_text(tomli_w.dumps(data))
    return path


def check_stimuli(runs, bids_dir, config: AnalysisConfig):
    """Build every run's timeline and read its confounds before the graph runs, so that bad
    events, stimuli or confounds fail fast and clearly, before any output is written; log
    what the stimuli are (:mod:`bids_vlm.inputs.stimulus_checks`, :mod:`bids_vlm.inputs.timeline_summary`:
    once, here).

    Returns (the runs of the analysis units that have a stimulus of the selected streams,
    {run label: timeline summary}, {unit: why it is skipped}): a unit without one is skipped
    with a warning, so that one task without usable stimuli does not lose the participant's
    others; NoInputError (65) when no unit has one."""
    streams = config.model.streams or ("image", "text")  # cross streams: either side
    root = config.stimuli.stimuli_dir or Path(bids_dir) / "stimuli"
    inspected, summaries, has_stimulus = [], {}, {}
    for run in runs:
        events = read_events(run.events)
        duration = run.n_scans * run.tr
        late = events["onset"] >= duration
        if len(events) and late.all():
            raise errors.DataError(f"every event starts after the end of the run ({duration:g} s "
                                   f"= {run.n_scans} volumes x TR {run.tr:g} s; onsets in "
                                   "milliseconds?)", run.events)
        if late.any():  # logged here once per run (the graph's timeline node does not)
            LOGGER.warning("%s: %d event(s) start after the run ends (%.1f s) and are ignored",
                           run.events, int(late.sum()), duration)
        _check_length(run, read_confounds(run.confounds, run.n_scans, config.bold), config)
        timeline = build_timeline(events, duration, config.stimuli, root, source=run.events)
        unit = unit_label(run, config.sessions)
        inspected.append((unit, run.events, inspect_run(events, config.stimuli, root)))
        summaries[run.label] = summarise(timeline)
        log_summary(run.label, run.events, summaries[run.label])
        has_stimulus[unit] = has_stimulus.get(unit, False) or any(
            x is not None for s in streams for x in sample_items(timeline, s))
    log_stimuli(inspected, config.stimuli, root)
    hint = {u: no_stimulus_hint([i for v, _, i in inspected if v == u], config.stimuli)
            for u in has_stimulus}
    if not any(has_stimulus.values()):
        raise NoInputError(f"no stimulus of the selected stream(s) ({', '.join(streams)}) in "
                           "any selected run's events"
                           f"{no_stimulus_hint([i for _, _, i in inspected], config.stimuli)}: "
                           "give a stimulus column (--stim-column: images or videos under "
                           "stimuli/ or --stimuli-dir), a text column (--text-column), or "
                           "--text-template, e.g. 'a photo of a {trial_type}'", runs[0].events)
    skipped = {u: f"no stimulus of the selected stream(s) ({', '.join(streams)}){hint[u]}"
               for u, found in has_stimulus.items() if not found}
    for unit, why in skipped.items():
        LOGGER.warning("%s: analysis unit skipped: %s", unit, why)
    kept = [r for r in runs if unit_label(r, config.sessions) not in skipped]
    return kept, summaries, skipped


MIN_FREE_FRAMES = 10  # frames a run must keep after cleaning (the association needs T_eff > 3)


def _check_length(run, confounds, config: AnalysisConfig):
    """DataError when cleaning (mean, trend, the high-pass's cosines, confounds) leaves the run
    fewer than MIN_FREE_FRAMES dimensions; runs of 300+ volumes always keep enough."""
    if run.n_scans >= 300:
        return
    with warnings.catch_warnings():  # nilearn: "Cosine filter was not created" (too short)
        warnings.simplefilter("ignore", UserWarning)
        removed = removed_dimensions(run.n_scans, run.tr, confounds, config.bold)
    if run.n_scans - removed < MIN_FREE_FRAMES:
        raise errors.DataError(
            f"the run is too short to analyse: {run.n_scans} volumes, of which the cleaning "
            f"(detrending, high-pass, {0 if confounds is None else confounds.shape[1]} "
            f"confounds) removes {removed}; at least {removed + MIN_FREE_FRAMES} are needed",
            run.bold)


def check_smoothing(runs, fwhm: float) -> None:
    """DataError (before anything runs) for --smoothing-fwhm on CIFTI grayordinates."""
    cifti = [r.bold for r in runs if r.bold.endswith(".dtseries.nii")]
    if fwhm and cifti:
        raise DataError(f"--smoothing-fwhm {fwhm:g} {SMOOTHING_REFUSED}", cifti[0])


def check_surface_atlas(runs, networks) -> None:
    """DataError (before anything runs) when the runs are CIFTI and ``--atlas`` has no
    grayordinate form, or their density is not 91k and the shipped (91k) atlases or the spin
    null (fs_LR 32k spheres) would be needed."""
    cifti = [r for r in runs if r.bold.endswith(".dtseries.nii")]
    if not cifti:
        return
    load_surface_networks(networks.atlas)
    other = [r for r in cifti if r.density not in (None, "91k")]
    if other and networks.atlas in SURFACE_SHIPPED:
        raise DataError(f"den-{other[0].density}: the shipped grayordinate atlases are 91k; "
                        "give --atlas PATH.dlabel.nii of the data's density", other[0].bold)
    if other and networks.n_surrogates > 0:
        raise DataError(f"den-{other[0].density}: the spin null of the network enrichment "
                        "needs the fs_LR 32k spheres (91k grayordinates); use --n-surrogates 0 "
                        "(the hypergeometric p, which assumes independent grayordinates) or "
                        "91k data", other[0].bold)


def run_participant(bids_dir, output_dir, config: AnalysisConfig, work_dir=None,
                    execution: Execution = Execution(), space="",
                    validate=False, force=False) -> list[Path]:
    """Analyse the selected participants; those already finished with the same fingerprint
    (:mod:`bids_vlm.finished`) are skipped unless ``force``. Returns their report paths.

    Every selected participant's lock (:mod:`bids_vlm.locks`) is held from before the finished
    check until its marker is written: in the output directory for all of them, in the work
    directory for those analysed; another run holding one stops this one with
    :class:`~bids_vlm.errors.BusyError` (exit 75) before anything is written.
    """
    config = with_atlas_digest(config)
    layout = load_layout(bids_dir, config.derivatives, validate=validate)
    runs = with_stimulus_files(collect_runs(layout, config.filters, space), bids_dir,
                               config.stimuli)  # their files under the options
    check_smoothing(runs, config.bold.smoothing_fwhm)
    check_surface_atlas(runs, config.networks)
    fingerprints = _fingerprints(runs, config)
    with contextlib.ExitStack() as held:
        for subject in fingerprints:  # sorted: every run takes them in the same order
            _lock(held, locks.output_lock_path(output_dir, f"sub-{subject}"), f"sub-{subject}",
                  "output directory")
        return _run_participant_locked(held, bids_dir, output_dir, config, runs, fingerprints,
                                       work_dir, execution, force)


def _run_participant_locked(held, bids_dir, output_dir, config, runs, fingerprints, work_dir,
                            execution, force) -> list[Path]:
    """:func:`run_participant` once the participants' output locks are held (``held``: the
    ExitStack that releases them, which takes the work directory's locks too)."""
    for subject in fingerprints:
        _remove_stale_temporaries(output_dir, f"sub-{subject}")
    skipped = [] if force else _finished(output_dir, fingerprints)
    runs = [r for r in runs if r.subject not in skipped]
    if not runs:  # nothing is written, not even the logs
        return [Path(output_dir) / f"sub-{s}.html" for s in skipped]
    runs, timelines, skipped_units = check_stimuli(runs, bids_dir, config)
    work = _work_dir(work_dir, output_dir)
    for subject in sorted({r.subject for r in runs}):
        _lock(held, locks.work_lock_path(work, f"sub-{subject}"), f"sub-{subject}")
    init_output(output_dir, bids_dir)
    write_config_log(output_dir, config, "participant",
                     {"bids_dir": str(bids_dir), "output_dir": str(output_dir),
                      "work_dir": str(work), "runs": [r.bold for r in runs],
                      "skipped_finished": skipped, "skipped_units": skipped_units},
                     execution)
    # with what each run shows: in the sidecars and the report
    units = [u.with_timeline(timelines) for u in analysis_units(runs, config.sessions)]
    execution_dir = work / "execution"  # read by the nodes; not in their caches
    for subject in sorted({u.subject for u in units}):
        write_execution(execution_dir / f"sub-{subject}", execution)
    wf = init_participant_wf(units=units, bids_dir=bids_dir, output_dir=output_dir,
                             work_dir=work, config=config,
                             skipped_units=skipped_units, execution_dir=execution_dir)
    _run(wf, output_dir, execution)
    subjects = sorted({u.subject for u in units})
    for subject in subjects:
        mark_finished(output_dir, subject, fingerprints[subject])
    return [Path(output_dir) / f"sub-{s}.html" for s in sorted(subjects + skipped)]


def _lock(held: contextlib.ExitStack, path, key: str, folder: str = "directory"):
    """Take the lock ``key`` at ``path`` (BusyError, exit 75, when another process holds it);
    ``held`` releases it. ``folder`` names the lock's folder in an error creating it."""
    held.enter_context(locks.acquire(path, key, folder))


def _remove_stale_temporaries(output_dir, key: str):
    """Remove (and log) the temporaries that a killed run left among ``key``'s outputs; the
    caller holds ``key``'s lock, so no live run is writing them."""
    removed = remove_stale_temporaries(output_dir, key)
    if removed:
        LOGGER.info("%s: removed %d temporary file(s) left by an interrupted run (e.g. %s)",
                    key, len(removed), removed[0])


def _fingerprints(runs, config: AnalysisConfig) -> dict:
    """{subject: analysis fingerprint of its selected runs under ``config``}."""
    cfg = node_config(config)
    return {s: participant_fingerprint(cfg, [r for r in runs if r.subject == s])
            for s in sorted({r.subject for r in runs})}


def _finished(output_dir, fingerprints: dict) -> list:
    """The subjects whose outputs are finished with the same fingerprint (logged)."""
    done = [s for s, fp in fingerprints.items() if is_finished(output_dir, s, fp)]
    for subject in done:
        LOGGER.info("sub-%s: finished earlier with the same inputs and options (%s); skipped, "
                    "--force analyses it again", subject, marker_path(output_dir, subject))
    return done


def with_atlas_digest(config: AnalysisConfig) -> AnalysisConfig:
    """The configuration with the hash of a user atlas (DataError, exit 64, naming the file
    when it or its labels TSV cannot be read), so that a changed atlas reruns its nodes."""
    digest = atlas_digest(config.networks.atlas)
    return dataclasses.replace(config, networks=dataclasses.replace(config.networks,
                                                                    atlas_digest=digest))


def run_group(bids_dir, output_dir, config: AnalysisConfig, work_dir=None,
              execution: Execution = Execution()):
    """Run the group level, holding the ``group`` lock (:mod:`bids_vlm.locks`) in the output
    and the work directory, and every participant's output lock, so that it never reads the
    outputs of a participant being analysed (BusyError, exit 75, when another run holds one)."""
    output_dir = Path(output_dir)
    if not list(output_dir.glob("sub-*/**/*_neurons.tsv")):
        raise NoInputError("no participant results here; run the participant level first",
                           output_dir)
    with contextlib.ExitStack() as held:
        for folder in sorted(p for p in output_dir.glob("sub-*") if p.is_dir()):
            _lock(held, locks.output_lock_path(output_dir, folder.name), folder.name)
        _lock(held, locks.output_lock_path(output_dir, "group"), "group")
        work = _work_dir(work_dir, output_dir)
        _lock(held, locks.work_lock_path(work, "group"), "group")
        _remove_stale_temporaries(output_dir, "group")
        write_config_log(output_dir, config, "group",
                         {"bids_dir": str(bids_dir), "output_dir": str(output_dir)}, execution)
        wf = init_group_wf(output_dir=output_dir, work_dir=work, config=config)
        _run(wf, output_dir, execution)
    return [output_dir / "group.html"]


def _work_dir(work_dir, output_dir) -> Path:
    work = Path(work_dir) if work_dir else default_work_dir(output_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.OutputError(f"cannot create the work directory: {exc}", work) from exc
    return work


def _run(wf, output_dir, execution: Execution):
    crash_dir = Path(output_dir) / "logs"
    wf.config["execution"].update({"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                                   "stop_on_first_crash": execution.stop_on_first_crash,
                                   "remove_unnecessary_outputs": False})
    if execution.omp_nthreads:  # inherited by the nodes, also in MultiProc / cluster jobs
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(execution.omp_nthreads)
        torch.set_num_threads(execution.omp_nthreads)
    plugin, args = execution.plugin_and_args()
    if plugin in ("SLURM", "SGE", "PBS"):  # their job names start with $LOGNAME, often unset
        os.environ.setdefault("LOGNAME", _login_name())  # in containers and CI
    started = time.time()
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except RuntimeError as exc:
        raise _node_error(crash_dir, started, wf.list_node_names()) from exc
    except OSError as exc:  # Nipype's own files in the work directory (disk full, quota, ...)
        raise errors.OutputError(f"cannot write the intermediate results: "
                                 f"{exc.strerror or exc} ({exc.filename2 or exc.filename})",
                                 wf.base_dir) from exc


def _login_name() -> str:
    """The user's login name; the user id where the container has no passwd entry for it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _node_error(crash_dir, since: float = 0.0, nodes=()) -> BidsVlmError:
    """The error of the newest crash file written since ``since`` by one of ``nodes`` (another
    run into the same output may write its own), with its exit code when it is a bids_vlm
    error."""
    crashes = sorted((p for p in Path(crash_dir).glob("crash-*.txt")
                      if p.stat().st_mtime >= since - 1),
                     key=lambda p: p.stat().st_mtime)
    ours = [p for p in crashes if any(n.rpartition(".")[2] in p.name for n in nodes)]
    crashes = ours or crashes
    text = crashes[-1].read_text(errors="replace") if crashes else ""
    match = re.findall(r"bids_vlm\.[\w.]*?(\w+Error): (.+)", text)
    full = re.findall(r"OSError: \[Errno (?:28|122|30)\] (.+)", text)  # disk full, quota, ro
    if match:
        cls = errors.error_class(match[-1][0])
        err = cls(match[-1][1])
    elif full:
        err = errors.OutputError(f"cannot write the intermediate results: {full[-1]}")
    else:
        last = [ln for ln in text.splitlines() if ln.strip()][-1:] or ["unknown error"]
        err = BidsVlmError(f"a pipeline step failed: {last[0].strip()}")
    err.args = (f"{err.args[0]} (details: {crashes[-1] if crashes else crash_dir})",)
    return err
