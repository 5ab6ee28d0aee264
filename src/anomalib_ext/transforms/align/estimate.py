"""One image's homography to the reference: the chosen estimator, then the agreement check."""

from __future__ import annotations

import logging

import numpy as np
import torch

from anomalib_ext.transforms.align.guided import agreement, estimate_guided
from anomalib_ext.transforms.align.images import ReferenceFeatures, detection_image, gradient_energy, to_gray_uint8
from anomalib_ext.transforms.align.ransac import estimate_ransac
from anomalib_ext.transforms.align.settings import AlignmentResult

logger = logging.getLogger(__name__)


def estimate_homography(image: np.ndarray | torch.Tensor, reference: ReferenceFeatures) -> AlignmentResult:
    """Homography from ``image`` to the reference frame, with a robust identity fallback.

    Whatever the method, a warp must pass the sanity checks (scale, perspective, folding; inside each
    method) and agree with the reference (``min_agreement``); otherwise the identity is returned with the reason.
    """
    s = reference.settings
    full = to_gray_uint8(image)
    keypoints, descriptors = reference.orb.detectAndCompute(detection_image(full, s), None)
    if s.method == "guided":
        result, score = estimate_guided(full, keypoints, descriptors, reference)
    else:
        result = estimate_ransac(full.shape[:2], keypoints, descriptors, reference)
        score = agreement(result.homography, gradient_energy(full), reference) if result.ok else -1.0
    if result.ok and score < s.min_agreement:
        reason = f"the warped image does not match the reference (agreement {score:.2f} < {s.min_agreement})"
        return AlignmentResult(np.eye(3), ok=False, inliers=result.inliers, reason=reason)
    return result
