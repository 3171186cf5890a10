"""Stage 6: AN x voxel association (and, later, layer-wise encoding)."""
from bids_vlm.encoding.association import (
                                           AUTOCORR_METHODS,
                                           AssociationResult,
                                           associate,
                                           block_size_for_memory,
                                           memory_bound,
                                           method_description,
                                           normalize_columns,
                                           prepare_voxels,
)
from bids_vlm.encoding.fdr import bh_z_thresholds

__all__ = ["AUTOCORR_METHODS", "AssociationResult", "associate", "bh_z_thresholds",
           "block_size_for_memory", "memory_bound", "method_description", "normalize_columns",
           "prepare_voxels"]
