"""Group level of the architecture comparison (docs/METHOD.md 8-9), for the participants' units run
with the same models (the same ``desc-<model>Vs<model>`` and task, acquisition and space):

- ``group_..._streamoverlap.tsv``: the participants' BN-map overlaps of paired streams at each
  relative depth, averaged over participants (a participant's sessions first), with the
  standard deviation of the Jaccard overlap across participants;
- ``group_..._msi.tsv``: :func:`bids_vlm.analysis.architecture.msi_summary` of the group
  per-AN modality specificity index (``msi`` of the group ``_networks.tsv`` of each model, from
  the participant-mean shares of BNs in the Visual and Language networks); it needs the group
  network tables (:mod:`bids_vlm.derivatives.group.summaries`) written first.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bids_vlm.analysis.architecture import msi_summary
from bids_vlm.derivatives import desc_label, write_json, write_tsv
from bids_vlm.derivatives.participant.architecture import MSI_COLUMNS, MSI_DESCRIPTION, OVERLAP_COLUMNS
from bids_vlm.derivatives.io import read_sidecar, read_tsv
from bids_vlm.names import unit_tables
from bids_vlm.analysis.group import AVERAGED, group_overlap





def combine_architecture(output_dir) -> list[Path]:
    """Write the group stream-overlap and MSI tables (module doc) under ``<output_dir>/group/``."""
    group = Path(output_dir) / "group"
    msi_units = unit_tables(output_dir, "msi")
    written = []
    for (rest, desc), items in unit_tables(output_dir, "streamoverlap").items():
        side = read_sidecar(items[0][1], required=False)
        meta = {"Models": side.get("Models", []), "LayersPerStream": side.get("LayersPerStream"),
                "Participants": sorted({s for s, _ in items})}
        path = group / f"group_{rest}_desc-{desc}_streamoverlap.tsv"
        columns = {c: {"Description": f"mean over participants: {d}"}
                   for c, d in OVERLAP_COLUMNS.items() if c in AVERAGED}
        columns.update({c: {"Description": d} for c, d in OVERLAP_COLUMNS.items()
                        if c not in AVERAGED})
        columns["sd_jaccard"] = {"Description": "standard deviation of the Jaccard overlap "
                                                "across participants"}
        columns["n_participants"] = {"Description": "participants averaged"}
        written += [write_tsv(path, group_overlap([(s, read_tsv(p)) for s, p in items])),
                    write_json(path.with_suffix(".json"), dict(
                        columns, Description=side.get("Description", ""), **meta))]
        per_an = _group_msi_inputs(group, rest, meta["Models"])
        if (rest, desc) in msi_units and per_an is not None:
            depth = {(m, s): n for m, streams in meta["LayersPerStream"].items()
                     for s, n in streams.items()}
            path = group / f"group_{rest}_desc-{desc}_msi.tsv"
            text = dict(MSI_COLUMNS, n_ans_with_bn="ANs with at least one BN in at least one "
                                                   "participant")
            written += [write_tsv(path, msi_summary(per_an, depth)),
                        write_json(path.with_suffix(".json"), dict(
                            {c: {"Description": d} for c, d in text.items()},
                            Description=f"{MSI_DESCRIPTION}; group level: the index of each AN "
                                        "from its participant-mean shares of BNs in the two "
                                        "networks (group _networks.tsv)", **meta))]
    return written


def _group_msi_inputs(group, rest, models) -> pd.DataFrame | None:
    """Per-AN (model, stream, layer, msi, has_bn) of the group tables of ``models``; None when
    a model has no group network table (native space) or no index in it."""
    frames = []
    for model in models:
        stem = group / f"group_{rest}_desc-{desc_label(model)}"
        nets, neurons = Path(f"{stem}_networks.tsv"), Path(f"{stem}_neurons.tsv")
        if not (nets.is_file() and neurons.is_file()):
            return None
        table, nets = read_tsv(neurons), read_tsv(nets)
        if "msi" not in nets:  # an atlas without Visual and Language networks
            return None
        msi = nets.set_index("an_id")["msi"].reindex(table.an_id)
        frames.append(pd.DataFrame({"model": model, "stream": table.stream, "layer": table.layer,
                                    "msi": msi.to_numpy(float),
                                    "has_bn": (table.n_participants_with_bn > 0).to_numpy()}))
    return pd.concat(frames, ignore_index=True) if frames else None
