"""Group level of the hierarchy and the virtual lesion (docs/METHOD.md 8-9).

The participants' ``_hierarchy.tsv`` and ``_lesion.tsv`` of one (task, acquisition, space,
model) are averaged, a participant's sessions first:

- ``group_..._hierarchy.tsv``: per stream and network, the mean over participants of their
  mean preferred depth (and layer), its standard deviation across participants and the number
  of participants with a value (a network without voxels with a preferred layer has none);
- ``group_..._lesion.tsv``: per network, stream and step, the mean over participants of the
  held-out r of the network with targeted and with random removal, and the number of
  participants (a participant's lesion covers only the networks its stream drives).
"""
from __future__ import annotations

from pathlib import Path

from bids_vlm.derivatives import write_json, write_tsv
from bids_vlm.derivatives.io import read_sidecar, read_tsv
from bids_vlm.names import unit_tables
from bids_vlm.analysis.group import group_hierarchy, group_lesion

HIERARCHY_COLUMNS = {
    "stream": "image, text, cross-image or cross-text",
    "network": "network of the atlas",
    "n_layers": "layers of the stream (the depth's denominator is n_layers - 1)",
    "mean_n_voxels": "mean over participants of the network's in-mask voxels",
    "mean_n_voxels_with_layer": "mean over participants of the network's voxels with a "
                                "preferred layer (best layer's held-out r significant)",
    "mean_preferred_layer": "mean over participants of their mean preferred layer index over "
                            "those voxels",
    "mean_preferred_depth": "mean over participants of their mean relative depth "
                            "layer / (n_layers - 1) of the preferred layer (0: first layer, "
                            "1: last)",
    "sd_preferred_depth": "standard deviation across participants (ddof 1) of their mean "
                          "preferred depth (not the SD over voxels of the participant tables); "
                          "n/a with one participant",
    "n_participants": "participants with a mean preferred depth for the network (some voxel "
                      "of it with a preferred layer)",
}
LESION_COLUMNS = {
    "network": "network of the atlas",
    "stream": "image, text, cross-image or cross-text",
    "step": "share of the lesioned layer's ANs removed at this step",
    "layers": "the participants' lesioned layers (each participant's layer of the stream with "
              "the highest mean held-out r over the network's voxels), ';'-joined",
    "mean_n_removed": "mean over participants of the ANs removed: ceil(step x n_ans)",
    "mean_r_targeted": "mean over participants of the network's mean held-out r with the "
                       "n_removed ANs with the most BNs in the network removed",
    "mean_r_random": "the same with n_removed ANs drawn at random removed (seeded; control)",
    "sd_r_targeted": "standard deviation across participants (ddof 1) of mean_r_targeted's "
                     "values; n/a with one participant",
    "sd_r_random": "the same for the random removal",
    "n_participants": "participants whose lesion table has the network and stream (the "
                      "network is driven by an AN of the stream in the participant)",
}
_CARRIED = ("Atlas", "AtlasSpace", "DataSpace", "LayerCount", "LesionSteps")








def combine_hierarchy(output_dir) -> list[Path]:
    """Write the group hierarchy and lesion tables (module doc) under ``<output_dir>/group/``."""
    group = Path(output_dir) / "group"
    written = []
    for suffix, combine, columns, what in (
            ("hierarchy", group_hierarchy, HIERARCHY_COLUMNS, "hierarchy: per network, the "
             "participants' mean relative depth of the voxels' preferred layers (highest "
             "held-out encoding r, where significant), averaged over participants (sessions "
             "first)"),
            ("lesion", group_lesion, LESION_COLUMNS, "virtual lesion: the participants' "
             "held-out encoding accuracy of each network as the ANs with the most BNs in it "
             "are removed (targeted) or random ANs are removed (control), averaged over "
             "participants (sessions first)")):
        for (rest, desc), items in unit_tables(output_dir, suffix).items():
            first = read_sidecar(items[0][1], required=False)
            meta = {k: first[k] for k in _CARRIED if k in first}
            meta.update(Model=first.get("Model", ""), Description=what,
                        Participants=sorted({s for s, _ in items}))
            path = group / f"group_{rest}_desc-{desc}_{suffix}.tsv"
            table = combine([(s, read_tsv(p)) for s, p in items])
            written += [write_tsv(path, table), write_json(path.with_suffix(".json"), dict(
                {c: {"Description": d} for c, d in columns.items()}, **meta))]
    return written
