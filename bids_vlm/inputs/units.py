"""Analysis units: the runs of one subject, task, acquisition, space (and, with ``--sessions
separate``, session) whose frames are concatenated and analysed together.

In bids_vlm "unit" means an analysis unit and nothing else; an artificial neuron is an AN (its
index within its layer is the ``unit`` column of the ``_neurons.tsv`` tables, a name kept for
the output format), and the number of ANs of a layer is its width.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

from bids_vlm.inputs.bids import RunSpec, run_from_dict

LOGGER = logging.getLogger("bids_vlm")


@dataclass(frozen=True)
class AnalysisUnit:
    """One analysis unit. ``runs``: its runs in order; ``timeline``: {run label: summary of
    what the run shows} (:mod:`bids_vlm.inputs.timeline_summary`), or None before the
    stimuli are checked."""

    subject: str
    session: str | None
    task: str
    acquisition: str | None
    space: str | None
    density: str | None
    runs: tuple[RunSpec, ...]
    timeline: dict | None = None

    @property
    def preprocessed(self) -> bool:
        """Whether every run's BOLD is a preprocessed derivative."""
        return all(r.preprocessed for r in self.runs)

    @property
    def sources(self) -> list[str]:
        """The BOLD files of its runs, in order."""
        return [r.bold for r in self.runs]

    @property
    def entities(self) -> dict:
        """Its BIDS entities (None where absent): sub, ses, task, acq, space, den."""
        return {"sub": self.subject, "ses": self.session, "task": self.task,
                "acq": self.acquisition, "space": self.space, "den": self.density}

    def with_timeline(self, timelines: dict) -> AnalysisUnit:
        """A copy whose ``timeline`` holds its runs' entries of ``timelines`` {run label: ...}."""
        return dataclasses.replace(self, timeline={r.label: timelines[r.label] for r in self.runs})

    def to_json(self) -> str:
        """The unit as JSON (how it travels to the Nipype nodes); :func:`unit_from_json`."""
        data = dataclasses.asdict(self)
        data["runs"] = [r.to_dict() for r in self.runs]
        return json.dumps(data)  # key order kept: the timeline lists the runs in order


def unit_from_json(text: str) -> AnalysisUnit:
    """The :class:`AnalysisUnit` that :meth:`AnalysisUnit.to_json` wrote."""
    data = json.loads(text)
    return AnalysisUnit(**dict(data, runs=tuple(run_from_dict(r) for r in data["runs"])))


def unit_label(run: RunSpec, sessions: str = "pooled") -> str:
    """The name of a run's analysis unit (its subject, task, acquisition and, with
    ``sessions`` 'separate', session), as :func:`analysis_units` groups them."""
    parts = [f"sub-{run.subject}"]
    if run.session and sessions == "separate":
        parts.append(f"ses-{run.session}")
    parts.append(f"task-{run.task}")
    if run.acquisition:
        parts.append(f"acq-{run.acquisition}")
    return "_".join(parts)


def analysis_units(runs, sessions: str = "pooled") -> list[AnalysisUnit]:
    """Group RunSpecs into units (subject, session, task, acquisition, space), in order.

    sessions: "separate", one unit per session; "pooled", the runs of all sessions in one unit
    (its session is None unless all its runs share one). Each unit warns when it has fewer
    than 2 runs (no leave-one-run-out encoding), naming its session."""
    groups = OrderedDict()
    for run in runs:
        session = run.session if sessions == "separate" else None
        groups.setdefault((run.subject, session, run.task, run.acquisition, run.space,
                           run.density), []).append(run)
    out = []
    for (subject, session, task, acq, space, density), members in groups.items():
        found = {r.session for r in members}
        session = session if session or len(found) != 1 else found.pop()
        out.append(AnalysisUnit(subject, session, task, acq, space, density, tuple(members)))
        if len(members) < 2:
            LOGGER.warning("sub-%s%s task-%s: %d run; layer-wise encoding (leave-one-run-out) "
                           "needs 2%s", subject, f" ses-{session}" if session else "", task,
                           len(members), " (--sessions pooled joins the sessions' runs)"
                           if sessions == "separate" else "")
    return out
