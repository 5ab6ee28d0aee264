"""Transforms on the host, usable with any anomalib model: ORB alignment to a reference image.

(The pyramid blocks run inside a model's graph: :mod:`anomalib_ext.components.pyramid_blocks`.)
"""

from anomalib_ext.transforms.align import (
    AlignmentResult,
    ORBAlign,
    ORBSettings,
    ReferenceFeatures,
    align,
    estimate_homography,
)

__all__ = [
    "AlignmentResult",
    "ORBAlign",
    "ORBSettings",
    "ReferenceFeatures",
    "align",
    "estimate_homography",
]
