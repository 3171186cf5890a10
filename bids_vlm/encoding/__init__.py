"""Stage 6: AN x voxel association (and, later, layer-wise encoding)."""
from bids_vlm.encoding.association import (AUTOCORR_METHODS, AssociationResult, associate,
                                           bh_z_thresholds, method_description,
                                           normalize_columns)

__all__ = ["AUTOCORR_METHODS", "AssociationResult", "associate", "bh_z_thresholds",
           "method_description", "normalize_columns"]
