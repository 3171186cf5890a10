"""The group-level Nipype graph: combine participants' maps, then write the group report."""
from __future__ import annotations

from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from bids_vlm.config import AnalysisConfig, to_json


def group_maps_node(output_dir):
    """Group maps and tables from the participants' derivatives; returns the written paths."""
    from bids_vlm.derivatives.group.combine import combine_participants

    return [str(p) for p in combine_participants(output_dir)]


def group_report_node(written, output_dir, config_json):
    from bids_vlm.config import from_json
    from bids_vlm.reports.group import group_report

    return str(group_report(output_dir, from_json(config_json)))


def init_group_wf(*, output_dir, work_dir, config: AnalysisConfig, name="bids_vlm_group"):
    """The group-level graph: ``group_maps`` (the participants' maps and tables combined under
    ``<output_dir>/group/``) -> ``group_report`` (``<output_dir>/group.html``).

    Parameters: output_dir, the derivatives folder the participant level wrote (read and
    written); work_dir, Nipype's base directory; config, the
    :class:`~bids_vlm.config.AnalysisConfig` the report describes. No input node: the inputs
    are set on the nodes; ``group_report``'s output is the report's path.
    """
    wf = pe.Workflow(name=name, base_dir=str(work_dir))
    maps = pe.Node(Function(input_names=["output_dir"], output_names=["out"],
                            function=group_maps_node), name="group_maps")
    maps.inputs.output_dir = str(output_dir)
    maps.overwrite = True  # the participants' outputs it reads are not tracked as inputs
    report = pe.Node(Function(input_names=["written", "output_dir", "config_json"],
                              output_names=["out"], function=group_report_node),
                     name="group_report")
    report.inputs.output_dir = str(output_dir)
    report.inputs.config_json = to_json(config)
    report.overwrite = True
    wf.connect(maps, "out", report, "written")
    return wf
