"""Transforms usable as dataset augmentations with any anomalib model."""

from anomalib_ext.transforms.align import (
    AlignmentResult,
    ORBAlign,
    ORBSettings,
    ReferenceFeatures,
    align,
    estimate_homography,
)
from anomalib_ext.transforms.pyramid import PyramidBlocks, num_blocks

__all__ = [
    "AlignmentResult",
    "ORBAlign",
    "ORBSettings",
    "PyramidBlocks",
    "ReferenceFeatures",
    "align",
    "estimate_homography",
    "num_blocks",
]
