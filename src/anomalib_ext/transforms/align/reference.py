"""Choosing the reference training image the others are aligned to."""

from __future__ import annotations

import logging

import numpy as np
import torch

from anomalib_ext.transforms.align.estimate import estimate_homography
from anomalib_ext.transforms.align.images import ReferenceFeatures, to_uint8_hwc
from anomalib_ext.transforms.align.settings import ORBSettings

logger = logging.getLogger(__name__)


def choose_reference(
    images: list[torch.Tensor],
    mode: str,
    settings: ORBSettings,
    *,
    candidates: int = 8,
    probes: int = 8,
) -> int:
    """Index of the reference: ``first``, or ``best`` = the candidate others align to with most inliers."""
    if mode == "first" or len(images) < 3:
        return 0
    if mode != "best":
        msg = f"reference must be 'first' or 'best', got '{mode}'"
        raise ValueError(msg)
    rng = np.random.default_rng(0)
    pool = list(range(min(candidates, len(images))))
    best, best_inliers = 0, -1.0
    for c in pool:
        reference = ReferenceFeatures(to_uint8_hwc(images[c]), settings)
        others = [i for i in range(len(images)) if i != c]
        picked = rng.choice(others, size=min(probes, len(others)), replace=False)
        inliers = np.mean([estimate_homography(to_uint8_hwc(images[i]), reference).inliers for i in picked])
        if inliers > best_inliers:
            best, best_inliers = c, inliers
    logger.info("Alignment reference: training image %d (mean %.1f inliers)", best, best_inliers)
    return best
