"""Stage 6: AN x voxel association: correlations, their null variance under autocorrelation,
FDR (docs/METHOD.md section 6); compiled CPU kernels and torch (CUDA) operations."""
from bids_vlm.stats.association import (
    AUTOCORR_METHODS,
    AssociationResult,
    associate,
    block_size_for_memory,
    memory_bound,
    method_description,
    normalize_columns,
    prepare_voxels,
)
from bids_vlm.stats.fdr import bh_z_thresholds

__all__ = ["AUTOCORR_METHODS", "AssociationResult", "associate", "bh_z_thresholds",
           "block_size_for_memory", "memory_bound", "method_description", "normalize_columns",
           "prepare_voxels"]
