"""Alignment to a reference image by ORB key points, Hamming matching and RANSAC.

Two estimators (``ORBSettings.method``):

- ``guided`` (default): a coarse homography from the images' gradient energy (ECC at low resolution:
  sees the print's outline, not its repeated letters), then ORB matches are taken only where that
  warp predicts them (radius 24 -> 8 -> 3 px), so repeated words or weave cannot pair wrong letters.
  If the coarse warp disagrees with the reference, an ORB similarity consensus and the identity are
  tried as well, and the warp whose result agrees best with the reference wins.
- ``ransac``: the AMFS authors' recipe (best 15% of cross-checked matches, RANSAC, re-fit).

Both end with the same check: the warped image's gradient energy must correlate with the reference's
(``min_agreement``); a warp that does not is a wrong warp and is reported as a failure, never used.

The package by concern: ``settings`` (ORBSettings, results), ``images`` (conversions, the reference's
features), ``ransac`` and ``guided`` (the estimators), ``estimate`` (one image), ``warp`` (warp and fill),
``reference`` (choosing the reference image), ``batch`` (``BatchAligner``: batches, failure counts, maps
warped back), ``step`` (``AlignmentStep``: the ``align`` host step any model can use, with its export
files) and ``transform`` (``ORBAlign``, a torchvision transform: image + mask).

The homography maps input pixels into the reference frame. When alignment fails (too few matches
or inliers, a degenerate or extreme matrix) the identity is used and the failure is reported in
the returned :class:`AlignmentResult` (and logged once per transform) — never a crash or a garbage warp.
"""

from anomalib_ext.transforms.align.batch import BatchAligner
from anomalib_ext.transforms.align.estimate import estimate_homography
from anomalib_ext.transforms.align.guided import agreement
from anomalib_ext.transforms.align.images import ReferenceFeatures, gradient_energy, to_gray_uint8, to_uint8_hwc
from anomalib_ext.transforms.align.reference import choose_reference
from anomalib_ext.transforms.align.settings import (
    UNSEEN,
    AlignmentResult,
    ORBSettings,
    ReferenceChoice,
    orb_settings,
)
from anomalib_ext.transforms.align.step import AlignmentStep
from anomalib_ext.transforms.align.transform import ORBAlign
from anomalib_ext.transforms.align.warp import align, warp_onto, warp_tensor

__all__ = [
    "UNSEEN",
    "AlignmentResult",
    "AlignmentStep",
    "BatchAligner",
    "ORBAlign",
    "ORBSettings",
    "ReferenceChoice",
    "ReferenceFeatures",
    "agreement",
    "align",
    "choose_reference",
    "estimate_homography",
    "gradient_energy",
    "orb_settings",
    "to_gray_uint8",
    "to_uint8_hwc",
    "warp_onto",
    "warp_tensor",
]
