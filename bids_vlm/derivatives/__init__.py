"""Stage 8: write the BIDS-Derivatives dataset: the shared writer (:mod:`.io`), the compact BN
store (:mod:`.bnstore`), a participant's outputs (:mod:`.participant`) and the group level's
(:mod:`.group`).

Every file is written under a temporary name in its final folder and renamed into place, so an
interrupted run never leaves a half-written output.
"""
from bids_vlm.derivatives.io import (BIDSIGNORE, atomic_path, dataset_description, init_output,
                                     write_json, write_map, write_sparse, write_tsv)
from bids_vlm.names import ENTITY_ORDER, bids_name, desc_label

__all__ = ["BIDSIGNORE", "ENTITY_ORDER", "atomic_path", "bids_name", "dataset_description",
           "desc_label", "init_output", "write_json", "write_map", "write_sparse", "write_tsv"]
