"""The Nipype graphs (workflows/participant.py, workflows/group.py); the import direction is
tests/base/test_imports.py's."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest
from nipype.interfaces.utility import Function, Merge
from nipype.pipeline import engine as pe

from bids_vlm.inputs.bids import RunSpec
from bids_vlm.config import (AnalysisConfig, EncodingConfig, ModelConfig, NetworkConfig,
                             from_json, to_json)
from workflows import nodes
from workflows.group import group_maps_node, group_report_node, init_group_wf
from bids_vlm.inputs.units import AnalysisUnit, analysis_units, unit_from_json
from workflows.participant import init_participant_wf

REPO = Path(__file__).resolve().parents[2]
SPACE = "MNI152NLin2009cAsym"


def _run(subject, run, task="view", session=None, acq=None, space=SPACE, preprocessed=True):
    return RunSpec(subject=subject, session=session, task=task, run=run, acquisition=acq,
                   bold=f"/data/sub-{subject}_task-{task}_run-{run}_bold.nii.gz",
                   events=f"/data/sub-{subject}_task-{task}_run-{run}_events.tsv", tr=2.0,
                   n_scans=20, mask=None, confounds=None, space=space,
                   preprocessed=preprocessed, fingerprint=f"{subject}{run}")


def test_analysis_units_group_in_first_seen_order():
    runs = [_run("02", 1), _run("01", 1), _run("02", 2), _run("01", 1, task="rest"),
            _run("01", 2), _run("01", 3, session="b"), _run("01", 4, acq="hi"),
            _run("01", 5, space="T1w", preprocessed=False), _run("01", 6, preprocessed=False)]
    units = analysis_units(runs, "separate")
    keys = [(u.subject, u.session, u.task, u.acquisition, u.space) for u in units]
    assert keys == [("02", None, "view", None, SPACE), ("01", None, "view", None, SPACE),
                    ("01", None, "rest", None, SPACE), ("01", "b", "view", None, SPACE),
                    ("01", None, "view", "hi", SPACE), ("01", None, "view", None, "T1w")]
    assert [[r.run for r in u.runs] for u in units] == [[1, 2], [1, 2, 6], [1], [3], [4], [5]]
    first = units[1]
    assert first.sources == [runs[1].bold, runs[4].bold, runs[8].bold]
    assert first.runs[0] == runs[1]
    assert first.preprocessed is False  # one of its runs is raw
    assert units[0].preprocessed is True
    assert first.entities == {"sub": "01", "ses": None, "task": "view", "acq": None,
                              "space": SPACE, "den": None}
    assert analysis_units([]) == []


def test_analysis_unit_travels_as_json_with_its_timeline():
    """The nodes get the unit as JSON: it comes back equal, runs and timeline included, the
    timeline's runs in the unit's order (run-10 after run-2, not sorted as text)."""
    units = analysis_units([_run("01", 2), _run("01", 10)])
    timelines = {"sub-01_task-view_run-10": {}, "sub-01_task-view_run-2": {"images": 3},
                 "sub-02_task-view_run-1": {"images": 9}}
    unit = units[0].with_timeline(timelines)
    assert list(unit.timeline.items()) == [("sub-01_task-view_run-2", {"images": 3}),
                                           ("sub-01_task-view_run-10", {})]
    back = unit_from_json(unit.to_json())
    assert back == unit and isinstance(back.runs, tuple) and isinstance(back, AnalysisUnit)
    assert list(back.timeline) == list(unit.timeline)
    assert units[0].timeline is None  # frozen: with_timeline returns a copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        unit.subject = "02"


def test_sessions_pooled_or_separate(caplog):
    """THINGS-like: 3 sessions of 1 and 2 runs. Pooled (default): one unit of 5 runs, no
    session entity; a subject with one session keeps it. Separate: one unit per session, and
    the one-run session is named in a warning."""
    runs = [_run("01", 1, session="1"), _run("01", 2, session="1"), _run("01", 1, session="2"),
            _run("01", 1, session="3"), _run("01", 2, session="3"), _run("02", 1, session="1"),
            _run("02", 2, session="1")]
    pooled = analysis_units(runs)
    assert [(u.subject, u.session, len(u.runs)) for u in pooled] == [
        ("01", None, 5), ("02", "1", 2)]
    assert [r.session for r in pooled[0].runs] == ["1", "1", "2", "3", "3"]
    with caplog.at_level("WARNING", logger="bids_vlm"):
        separate = analysis_units(runs, "separate")
    assert [(u.subject, u.session, len(u.runs)) for u in separate] == [
        ("01", "1", 2), ("01", "2", 1), ("01", "3", 2), ("02", "1", 2)]
    assert "sub-01 ses-2 task-view: 1 run" in caplog.text and "--sessions pooled" in caplog.text


@pytest.fixture
def participant_wf(tmp_path):
    units = analysis_units([_run("01", 1), _run("01", 2), _run("02", 1)])
    config = AnalysisConfig(model=ModelConfig(models=("tiny-clip",)))
    wf = init_participant_wf(units=units, bids_dir=tmp_path / "bids", output_dir=tmp_path / "out",
                             work_dir=tmp_path / "work", config=config)
    return wf, units, config, tmp_path


FUNCTION_OF = {"timelines": "timelines_node", "mask": "mask_node", "clean": "clean_node",
               "extract": "extract_node", "regressors": "regressors_node",
               "associate": "associate_node", "encode": "encode_node", "outputs": "outputs_node",
               "report": "report_node", "lesion": "lesion_node", "enrich": "enrich_node"}


def test_participant_wf_node_names(participant_wf):
    wf, units, config, tmp = participant_wf
    assert wf.name == "bids_vlm_participant"
    assert Path(wf.base_dir) == tmp / "work"
    assert len(units) == 2
    tags = ["sub_01_tas_view_spa_MNI152NLin2009cAsym", "sub_02_tas_view_spa_MNI152NLin2009cAsym"]
    expected = set()
    for tag in tags:
        expected |= {f"timelines_{tag}", f"mask_{tag}", f"clean_{tag}", f"associations_{tag}",
                     f"extract_{tag}_tiny_clip", f"regressors_{tag}_tiny_clip",
                     f"associate_{tag}_tiny_clip", f"outputs_{tag}", f"encodings_{tag}",
                     f"encode_{tag}_tiny_clip", f"lesion_{tag}_tiny_clip", f"lesions_{tag}",
                     f"enrich_{tag}_tiny_clip", f"enrichments_{tag}"}
    expected |= {"written_sub_01", "written_sub_02", "report_sub_01", "report_sub_02"}
    assert set(wf.list_node_names()) == expected


def test_participant_wf_functions_come_from_nodes_module(participant_wf):
    wf, *_ = participant_wf
    checked = set()
    for name in wf.list_node_names():
        node = wf.get_node(name)
        prefix = name.split("_")[0]
        if prefix in ("associations", "encodings", "written", "lesions", "enrichments"):
            assert isinstance(node.interface, Merge)
            continue
        iface = node.interface
        assert isinstance(iface, Function)
        func = getattr(nodes, FUNCTION_OF[prefix])
        assert func.__module__ == "workflows.nodes"
        assert iface.inputs.function_str == inspect.getsource(func)
        defined = re.match(r"def (\w+)\(", iface.inputs.function_str).group(1)
        assert defined == FUNCTION_OF[prefix]
        assert iface._input_names == list(inspect.signature(func).parameters)
        checked.add(prefix)
    assert checked == set(FUNCTION_OF)


def test_participant_wf_clean_is_a_mapnode_over_runs(participant_wf):
    wf, units, config, tmp = participant_wf
    for tag, unit in (("sub_01_tas_view_spa_MNI152NLin2009cAsym", units[0]),
                      ("sub_02_tas_view_spa_MNI152NLin2009cAsym", units[1])):
        clean = wf.get_node(f"clean_{tag}")
        assert isinstance(clean, pe.MapNode)
        assert clean.iterfield == ["run_json"]
        assert [json.loads(r) for r in clean.inputs.run_json] == [r.to_dict() for r in unit.runs]
        node_config = from_json(clean.inputs.config_json)
        # the unit's input fingerprint travels in the nodes' configuration (cache invalidation)
        assert node_config.fingerprint == "-".join(r.fingerprint for r in unit.runs)
        assert dataclasses.replace(node_config, fingerprint="") == config
        for name in ("timelines", "mask", "outputs"):
            assert not isinstance(wf.get_node(f"{name}_{tag}"), pe.MapNode)
        timelines = wf.get_node(f"timelines_{tag}")
        assert json.loads(timelines.inputs.runs_json) == [r.to_dict() for r in unit.runs]
        assert timelines.inputs.bids_dir == str(tmp / "bids")
        outputs = wf.get_node(f"outputs_{tag}")
        assert unit_from_json(outputs.inputs.unit_json) == unit
        assert outputs.inputs.output_dir == str(tmp / "out")
        assert wf.get_node(f"extract_{tag}_tiny_clip").inputs.model_name == "tiny-clip"


def _edges(wf):
    out = set()
    for src, dst, data in wf._graph.edges(data=True):
        for s_field, d_field in data["connect"]:
            out.add((src.name, s_field, dst.name, d_field))
    return out


def test_participant_wf_connections(participant_wf):
    wf, *_ = participant_wf
    edges = _edges(wf)
    tag = "sub_01_tas_view_spa_MNI152NLin2009cAsym"
    m = f"{tag}_tiny_clip"
    for edge in [(f"mask_{tag}", "out", f"clean_{tag}", "mask_file"),
                 (f"timelines_{tag}", "out", f"extract_{m}", "timelines_file"),
                 (f"timelines_{tag}", "out", f"regressors_{m}", "timelines_file"),
                 (f"extract_{m}", "out", f"regressors_{m}", "activations_file"),
                 (f"regressors_{m}", "out", f"associate_{m}", "regressors_file"),
                 (f"clean_{tag}", "out", f"associate_{m}", "cleaned_files"),
                 (f"associate_{m}", "out", f"associations_{tag}", "in1"),
                 (f"associations_{tag}", "out", f"outputs_{tag}", "association_files"),
                 (f"regressors_{m}", "out", f"encode_{m}", "regressors_file"),
                 (f"clean_{tag}", "out", f"encode_{m}", "cleaned_files"),
                 (f"encode_{m}", "out", f"encodings_{tag}", "in1"),
                 (f"encodings_{tag}", "out", f"outputs_{tag}", "encoding_files"),
                 (f"mask_{tag}", "out", f"outputs_{tag}", "mask_file"),
                 (f"regressors_{m}", "out", f"lesion_{m}", "regressors_file"),
                 (f"clean_{tag}", "out", f"lesion_{m}", "cleaned_files"),
                 (f"associate_{m}", "out", f"lesion_{m}", "association_file"),
                 (f"encode_{m}", "out", f"lesion_{m}", "encoding_file"),
                 (f"mask_{tag}", "out", f"lesion_{m}", "mask_file"),
                 (f"lesion_{m}", "out", f"lesions_{tag}", "in1"),
                 (f"lesions_{tag}", "out", f"outputs_{tag}", "lesion_files"),
                 (f"outputs_{tag}", "out", "written_sub_01", "in1"),
                 ("written_sub_01", "out", "report_sub_01", "written")]:
        assert edge in edges
    # a subject's report waits only for its own units
    into_report = {e for e in edges if e[2] == "report_sub_02"}
    assert into_report == {("written_sub_02", "out", "report_sub_02", "written")}
    report = wf.get_node("report_sub_02")
    assert report.inputs.subject == "02"


def test_participant_wf_two_models(tmp_path):
    units = analysis_units([_run("01", 1)])
    config = AnalysisConfig(model=ModelConfig(models=("tiny-clip", "clip-vit-b-32")))
    wf = init_participant_wf(units=units, bids_dir=tmp_path, output_dir=tmp_path / "out",
                             work_dir=tmp_path / "work", config=config)
    names = set(wf.list_node_names())
    tag = "sub_01_tas_view_spa_MNI152NLin2009cAsym"
    for model in ("tiny_clip", "clip_vit_b_32"):
        assert {f"extract_{tag}_{model}", f"regressors_{tag}_{model}",
                f"associate_{tag}_{model}"} <= names
    edges = _edges(wf)
    assert (f"associate_{tag}_clip_vit_b_32", "out", f"associations_{tag}", "in2") in edges


@pytest.mark.parametrize("change", [{"networks": NetworkConfig(lesion_steps=())},
                                    {"encoding": EncodingConfig(enabled=False)}])
def test_no_lesion_node_without_steps_or_encoding(tmp_path, change):
    units = analysis_units([_run("01", 1)])
    config = dataclasses.replace(AnalysisConfig(), **change)
    wf = init_participant_wf(units=units, bids_dir=tmp_path, output_dir=tmp_path / "out",
                             work_dir=tmp_path / "work", config=config)
    assert not [n for n in wf.list_node_names() if n.startswith("lesion")]
    outputs = wf.get_node("outputs_sub_01_tas_view_spa_MNI152NLin2009cAsym")
    assert outputs.inputs.lesion_files == []


def test_save_cleaned_node_only_with_the_option(tmp_path):
    from bids_vlm.config import BoldConfig

    units = analysis_units([_run("01", 1), _run("01", 2)])
    tag = "sub_01_tas_view_spa_MNI152NLin2009cAsym"
    wf = init_participant_wf(units=units, bids_dir=tmp_path, output_dir=tmp_path / "out",
                             work_dir=tmp_path / "work", config=AnalysisConfig())
    assert not [n for n in wf.list_node_names() if n.startswith("save_cleaned")]
    config = AnalysisConfig(bold=BoldConfig(save_cleaned=True))
    wf = init_participant_wf(units=units, bids_dir=tmp_path, output_dir=tmp_path / "out",
                             work_dir=tmp_path / "work", config=config)
    node = wf.get_node(f"save_cleaned_{tag}")
    assert node.interface.inputs.function_str == inspect.getsource(nodes.save_cleaned_node)
    assert node.overwrite  # it writes into the output folder
    sources = {(u.name, v.name, c[0][1]) for u, v, c in
               ((u, v, d["connect"]) for u, v, d in wf._graph.in_edges(node, data=True))}
    assert sources == {(f"clean_{tag}", node.name, "cleaned_files"),
                       (f"timelines_{tag}", node.name, "timelines_file"),
                       (f"mask_{tag}", node.name, "mask_file")}
    assert unit_from_json(node.inputs.unit_json) == units[0]


def test_group_wf(tmp_path):
    config = AnalysisConfig()
    wf = init_group_wf(output_dir=tmp_path / "out", work_dir=tmp_path / "work", config=config)
    assert wf.name == "bids_vlm_group"
    assert set(wf.list_node_names()) == {"group_maps", "group_report"}
    maps, report = wf.get_node("group_maps"), wf.get_node("group_report")
    assert maps.interface.inputs.function_str == inspect.getsource(group_maps_node)
    assert report.interface.inputs.function_str == inspect.getsource(group_report_node)
    assert maps.inputs.output_dir == str(tmp_path / "out")
    assert report.inputs.config_json == to_json(config)
    assert maps.overwrite and report.overwrite
    assert _edges(wf) == {("group_maps", "out", "group_report", "written")}


def test_nodes_are_thin():
    """Each node reads its inputs and calls stage functions: at most 20 lines of code under its
    docstring (imports included), the pipeline's logic lives in the package."""
    import ast

    source = Path(nodes.__file__).read_text()
    functions = [f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef)]
    assert {f.name for f in functions} >= set(FUNCTION_OF.values())
    for func in functions:
        body = func.body[1:] if isinstance(func.body[0], ast.Expr) else func.body
        lines = source.splitlines()[body[0].lineno - 1:func.end_lineno]
        assert len([line for line in lines if line.strip()]) <= 20, func.name


def test_workflow_factories_take_keywords_only(tmp_path):
    """As fMRIPrep's init_*_wf: a positional call is a TypeError, not a silent mix-up of the
    output and work folders."""
    with pytest.raises(TypeError):
        init_participant_wf([], tmp_path, tmp_path / "out", tmp_path / "work", AnalysisConfig())
    with pytest.raises(TypeError):
        init_group_wf(tmp_path / "out", tmp_path / "work", AnalysisConfig())
