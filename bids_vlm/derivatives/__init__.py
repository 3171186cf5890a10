"""Stage 8: write the BIDS-Derivatives dataset.

Every file is written under a temporary name in its final folder and renamed into place, so an
interrupted run never leaves a half-written output.
"""
from bids_vlm.derivatives.io import (
                                     BIDSIGNORE,
                                     ENTITY_ORDER,
                                     atomic_path,
                                     bids_name,
                                     dataset_description,
                                     desc_label,
                                     init_output,
                                     write_json,
                                     write_map,
                                     write_sparse,
                                     write_tsv,
)
from bids_vlm.derivatives.unit import (
                                     NEURON_COLUMNS,
                                     func_dir,
                                     unit_entities,
                                     write_unit_outputs,
)

__all__ = ["BIDSIGNORE", "ENTITY_ORDER", "NEURON_COLUMNS", "atomic_path", "bids_name",
           "dataset_description", "desc_label", "func_dir", "init_output", "unit_entities",
           "write_json", "write_map", "write_sparse", "write_tsv", "write_unit_outputs"]
