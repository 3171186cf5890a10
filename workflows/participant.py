"""The participant-level Nipype graph.

For each analysis unit (one subject, session, task and acquisition: the runs whose voxels are
concatenated) the graph is::

    timelines ─┬─ extract[model] ── regressors[model] ─┬─ associate[model] ── enrich[model] ─┐
               │                                        └─ encode[model] ───────── lesion ───┤
    mask ── clean[run] ──── (into associate, encode, enrich, lesion) ────────── outputs ── report
                      └─ save_cleaned (with --save-cleaned: the cleaned runs as derivatives)

enrich computes the network enrichment of every layer once (its spatial null is costly); the
lesion reads which networks are driven from it, outputs the networks table.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import OrderedDict
from pathlib import Path

from nipype.interfaces.utility import Function, Merge
from nipype.pipeline import engine as pe

from bids_vlm.config import AnalysisConfig, RunFilter, from_json, to_json
from bids_vlm.names import READABLE_MAX, is_plain_model, model_hash, model_words
from bids_vlm.inputs.units import AnalysisUnit
from workflows import nodes


def node_config(config: AnalysisConfig) -> str:
    """The configuration the nodes get, as JSON: without the run filters and derivative paths,
    which only select runs (the runs themselves are node inputs), so that a rerun restricted to
    some participants reuses their cached results."""
    return to_json(dataclasses.replace(config, filters=RunFilter(), derivatives=()))


def _function_node(func, name, inputs, mapnode_field=None):
    iface = Function(input_names=list(inputs), output_names=["out"], function=func)
    if mapnode_field:
        node = pe.MapNode(iface, iterfield=[mapnode_field], name=name)
    else:
        node = pe.Node(iface, name=name)
    for key, value in inputs.items():
        if value is not None:
            setattr(node.inputs, key, value)
    return node


def _unit_name(unit: AnalysisUnit) -> str:
    """The unit's part of node names: its entities' values, only [A-Za-z0-9_]."""
    parts = [f"sub_{unit.subject}"]
    for key in ("session", "task", "acquisition", "space", "density"):
        if getattr(unit, key):
            parts.append(f"{key[:3]}_{getattr(unit, key)}")
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))


def model_tag(model: str) -> str:
    """The model's part of node names (and so of work-directory folders): only [A-Za-z0-9_],
    one per model, the same in every run (so that a rerun finds its cached nodes).

    A registered name with '-' as '_' (``tiny-clip`` -> ``tiny_clip``); a spec
    (``open_clip:...``, ``hf-clip:...``) its readable words joined by '_' (at most 40
    characters; a path only by its last component) and 8 hex digits of the full spec's SHA-256,
    e.g. ``open_clip:ViT-B-32:/m/x.safetensors`` -> ``open_clip_ViT_B_32_x_<hash>``.
    """
    if is_plain_model(model):
        return model.replace("-", "_")
    readable = "_".join(model_words(model))[:READABLE_MAX].strip("_")
    return f"{readable}_{model_hash(model)}" if readable else f"model_{model_hash(model)}"


def model_tags(models) -> dict:
    """{model: node-name tag} of the distinct ``models``, in order; ValueError if two tags
    are equal (which needs two specs whose 32-bit hashes collide)."""
    tags = {m: model_tag(m) for m in dict.fromkeys(models)}
    if len(set(tags.values())) != len(tags):
        raise ValueError(f"models {', '.join(tags)} give the same node names; rename a file")
    return tags


def init_participant_wf(*, units, bids_dir, output_dir, work_dir, config: AnalysisConfig,
                        name="bids_vlm_participant", skipped_units=None, execution_dir=None):
    """The participant-level graph of all the selected participants' analysis units.

    Parameters
    ----------
    units : list of :class:`~bids_vlm.inputs.units.AnalysisUnit`
        Each gets the nodes of the module's graph (node names end with the unit's entities,
        and with the model's tag for the per-model nodes).
    bids_dir, output_dir, work_dir : path
        The dataset, the derivatives folder written, Nipype's base directory.
    config : :class:`~bids_vlm.config.AnalysisConfig`
        What changes results; every node gets it as JSON, with the unit's input fingerprint,
        so that a changed input reruns the unit's nodes.
    skipped_units : dict
        {unit label: why} of the units left out before the graph (their participant's report
        lists them).
    execution_dir : path
        The folder of each participant's ``sub-<label>`` folder
        (:func:`bids_vlm.config.write_execution`), read when they run by the nodes that need
        the device, batch, block or memory settings; its path, not its content, enters the
        node caches (None: the defaults of :class:`bids_vlm.config.Execution`).

    Inputs and outputs
    ------------------
    The graph has no input node: every input is set on its nodes. It writes the derivatives of
    each unit (node ``outputs_<unit>``: their paths) and of each participant the report
    ``<output_dir>/sub-<label>.html`` (node ``report_sub_<label>``: its path).
    """
    wf = pe.Workflow(name=name, base_dir=str(work_dir))
    cfg = node_config(config)
    per_subject = OrderedDict()
    for unit in units:
        # every node of the unit gets the unit's input fingerprint in its configuration, so
        # that a changed BOLD, events, mask, confounds or stimulus file reruns them all
        unit_cfg = json.loads(cfg)
        unit_cfg["fingerprint"] = "-".join(r.fingerprint for r in unit.runs)
        unit_execution = (str(Path(execution_dir) / f"sub-{unit.subject}")
                          if execution_dir else "")
        per_subject.setdefault(unit.subject, []).append(
            _unit_graph(wf, unit, bids_dir, output_dir, json.dumps(unit_cfg, sort_keys=True),
                        unit_execution))
    for subject, outputs in per_subject.items():
        merge = pe.Node(Merge(len(outputs)), name=f"written_sub_{subject}")
        for i, node in enumerate(outputs, start=1):
            wf.connect(node, "out", merge, f"in{i}")
        report = _function_node(nodes.report_node, f"report_sub_{subject}",
                                {"written": None, "output_dir": str(output_dir),
                                 "subject": subject, "config_json": cfg,
                                 "skipped_json": json.dumps(
                                     {u: why for u, why in (skipped_units or {}).items()
                                      if u.startswith(f"sub-{subject}_")})})
        report.overwrite = True
        wf.connect(merge, "out", report, "written")
    return wf


def _lesion_node(wf, mtag, unit_json, cfg, execution_dir, sources, target):
    """The virtual-lesion node of one model, fed by its regressors, the cleaned runs, its
    association and encoding, and the mask; its result goes to ``target`` (node, input)."""
    regs, clean, assoc, encode, mask, enrich = sources
    node = _function_node(nodes.lesion_node, f"lesion_{mtag}",
                          {"regressors_file": None, "cleaned_files": None,
                           "association_file": None, "encoding_file": None, "mask_file": None,
                           "unit_json": unit_json, "config_json": cfg,
                           "enrichment_file": None, "execution_dir": execution_dir})
    wf.connect([(enrich, node, [("out", "enrichment_file")]),
                (regs, node, [("out", "regressors_file")]),
                (clean, node, [("out", "cleaned_files")]),
                (assoc, node, [("out", "association_file")]),
                (encode, node, [("out", "encoding_file")]),
                (mask, node, [("out", "mask_file")]),
                (node, target[0], [("out", target[1])])])


def _unit_graph(wf, unit, bids_dir, output_dir, cfg, execution_dir=""):
    """Add one unit's nodes to ``wf``; returns its outputs node."""
    tag = _unit_name(unit)
    runs_json = json.dumps([r.to_dict() for r in unit.runs])
    timelines = _function_node(nodes.timelines_node, f"timelines_{tag}",
                               {"runs_json": runs_json, "bids_dir": str(bids_dir),
                                "config_json": cfg})
    mask = _function_node(nodes.mask_node, f"mask_{tag}", {"runs_json": runs_json})
    clean = _function_node(nodes.clean_node, f"clean_{tag}",
                           {"run_json": [json.dumps(r.to_dict()) for r in unit.runs],
                            "mask_file": None, "config_json": cfg}, mapnode_field="run_json")
    wf.connect(mask, "out", clean, "mask_file")
    # the same model named twice is recorded once (its nodes would have the same names)
    conf = from_json(cfg)  # parsed once: which models, paper mode, lesion, saved cleaned runs
    tags = model_tags(conf.model.models)
    models = list(tags)
    merge = pe.Node(Merge(len(models)), name=f"associations_{tag}")
    merge_enc = pe.Node(Merge(len(models)), name=f"encodings_{tag}")
    merge_enrich = pe.Node(Merge(len(models)), name=f"enrichments_{tag}")
    paper = conf.stats.paper_mode
    merge_atoms = pe.Node(Merge(len(models)), name=f"atoms_{tag}") if paper else None
    unit_json = unit.to_json()
    lesion = conf.encoding.enabled and bool(conf.networks.lesion_steps)
    merge_lesion = pe.Node(Merge(len(models)), name=f"lesions_{tag}") if lesion else None
    for i, model in enumerate(models, start=1):
        mtag = f"{tag}_{tags[model]}"
        extract = _function_node(nodes.extract_node, f"extract_{mtag}",
                                 {"timelines_file": None, "model_name": model,
                                  "config_json": cfg,
                                  "cache_dir": str(Path(wf.base_dir) / "activation_cache"),
                                  "execution_dir": execution_dir})
        regs = _function_node(nodes.regressors_node, f"regressors_{mtag}",
                              {"timelines_file": None, "activations_file": None,
                               "runs_json": runs_json, "config_json": cfg})
        assoc = _function_node(nodes.associate_node, f"associate_{mtag}",
                               {"regressors_file": None, "cleaned_files": None,
                                "config_json": cfg, "execution_dir": execution_dir})
        encode = _function_node(nodes.encode_node, f"encode_{mtag}",
                                {"regressors_file": None, "cleaned_files": None,
                                 "config_json": cfg, "execution_dir": execution_dir})
        wf.connect([(regs, encode, [("out", "regressors_file")]),
                    (clean, encode, [("out", "cleaned_files")]),
                    (encode, merge_enc, [("out", f"in{i}")])])
        enrich = _function_node(nodes.enrich_node, f"enrich_{mtag}",
                                {"association_file": None, "mask_file": None,
                                 "unit_json": unit_json, "config_json": cfg})
        wf.connect([(assoc, enrich, [("out", "association_file")]),
                    (mask, enrich, [("out", "mask_file")]),
                    (enrich, merge_enrich, [("out", f"in{i}")])])
        if lesion:
            _lesion_node(wf, mtag, unit_json, cfg, execution_dir,
                         (regs, clean, assoc, encode, mask, enrich),
                         (merge_lesion, f"in{i}"))
        if paper:
            atoms = _function_node(nodes.atoms_node, f"atoms_{mtag}",
                                   {"timelines_file": None, "activations_file": None,
                                    "runs_json": runs_json, "cleaned_files": None,
                                    "config_json": cfg})
            wf.connect([(timelines, atoms, [("out", "timelines_file")]),
                        (extract, atoms, [("out", "activations_file")]),
                        (clean, atoms, [("out", "cleaned_files")]),
                        (atoms, merge_atoms, [("out", f"in{i}")])])
        wf.connect([(timelines, extract, [("out", "timelines_file")]),
                    (timelines, regs, [("out", "timelines_file")]),
                    (extract, regs, [("out", "activations_file")]),
                    (regs, assoc, [("out", "regressors_file")]),
                    (clean, assoc, [("out", "cleaned_files")]),
                    (assoc, merge, [("out", f"in{i}")])])
    outputs = _function_node(nodes.outputs_node, f"outputs_{tag}",
                             {"association_files": None, "encoding_files": None,
                              "atom_files": [] if not paper else None, "mask_file": None,
                              "unit_json": unit_json, "output_dir": str(output_dir),
                              "bids_dir": str(bids_dir), "config_json": cfg,
                              "lesion_files": [] if not lesion else None,
                              "enrichment_files": None})
    outputs.overwrite = True  # it writes outside the work dir: never trust a cached result
    if conf.bold.save_cleaned:
        saved = _function_node(nodes.save_cleaned_node, f"save_cleaned_{tag}",
                               {"cleaned_files": None, "timelines_file": None, "mask_file": None,
                                "unit_json": unit_json,
                                "output_dir": str(output_dir)})
        saved.overwrite = True
        wf.connect([(clean, saved, [("out", "cleaned_files")]),
                    (timelines, saved, [("out", "timelines_file")]),
                    (mask, saved, [("out", "mask_file")])])
    wf.connect([(merge, outputs, [("out", "association_files")]),
                (merge_enrich, outputs, [("out", "enrichment_files")]),
                (merge_enc, outputs, [("out", "encoding_files")]),
                *([(merge_atoms, outputs, [("out", "atom_files")])] if paper else []),
                *([(merge_lesion, outputs, [("out", "lesion_files")])] if lesion else []),
                (mask, outputs, [("out", "mask_file")])])
    return outputs
