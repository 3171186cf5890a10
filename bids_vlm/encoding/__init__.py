"""Stage 6: AN x voxel association (and, later, layer-wise encoding)."""
from bids_vlm.encoding.association import (ASSOCIATION_METHOD, AssociationResult, associate,
                                           bh_r_thresholds, normalize_columns)

__all__ = ["ASSOCIATION_METHOD", "AssociationResult", "associate", "bh_r_thresholds",
           "normalize_columns"]
