"""The derivatives of one analysis unit (subject, session, task, acquisition): maps, neuron
tables and compact associations (:mod:`.association`), layer-wise encoding maps
(:mod:`.encoding`), network and lesion tables (:mod:`.networks`), the paper mode's atoms
(:mod:`.atoms`) and the architecture tables (:mod:`.architecture`)."""
from __future__ import annotations

from bids_vlm import brainmask
from bids_vlm.derivatives.participant.architecture import write_architecture_outputs
from bids_vlm.derivatives.participant.association import write_association_outputs
from bids_vlm.derivatives.participant.atoms import write_atom_outputs
from bids_vlm.derivatives.participant.common import func_dir
from bids_vlm.derivatives.participant.encoding import write_encoding_outputs
from bids_vlm.derivatives.participant.networks import unit_networks, write_lesion


def write_unit_outputs(association_files, encoding_files, mask_file, unit, output_dir,
                       bids_dir, config, atom_files=(), lesion_files=(),
                       enrichment_files=()) -> list:
    """Maps, neuron tables, compact associations, encoding maps and network tables of one
    analysis unit; enrichment_files: each association's network enrichment
    (:func:`bids_vlm.analysis.layers.write_enrichment`; () computes them here)."""
    mask = brainmask.load(mask_file)
    ijk = brainmask.rows_ijk(mask)  # (V, 3), the order of masking.apply_mask / the rows
    ents = unit.entities
    folder = func_dir(output_dir, unit)
    networks = unit_networks(mask, unit, config)  # (masks or None, sidecar fields)
    written = []
    enrichment_files = list(enrichment_files) or [None] * len(association_files)
    for assoc_file, enrichment_file in zip(association_files, enrichment_files, strict=True):
        written += write_association_outputs(assoc_file, folder, ents, mask, ijk, unit, config,
                                             networks, enrichment_file)
    for enc_file in encoding_files:
        written += write_encoding_outputs(enc_file, folder, ents, mask, unit, config, networks)
    for lesion_file in lesion_files:
        written += write_lesion(lesion_file, folder, ents, config,
                                {"Sources": unit.sources})
    for atom_file in atom_files:
        written += write_atom_outputs(atom_file, folder, ents, mask, ijk, unit, config)
    return written + write_architecture_outputs(folder, ents, written)
