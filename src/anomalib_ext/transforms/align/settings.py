"""Alignment settings and results: what every part of the alignment shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from anomalib_ext.settings import as_settings

logger = logging.getLogger(__name__)


# What ``mark_unseen`` writes where an aligned image has no pixels of the photograph: outside [0, 1], so no
# real pixel can be mistaken for it, and a model's graph can tell seen from unseen pixels in-band.
UNSEEN = -1.0


@dataclass(frozen=True)
class AlignmentResult:
    """The outcome of one alignment; a failure carries the identity and the reason."""

    homography: np.ndarray  # 3x3, input frame -> reference frame
    ok: bool
    inliers: int
    reason: str = ""


@dataclass(frozen=True)
class ORBSettings:
    """ORB alignment settings.

    ``method="ransac", n_features=500`` is the AMFS authors' recipe (best 15% of matches, 3 px RANSAC); the
    default ``guided`` method uses 800 features (measured on word-grid prints: 500 -> 18, 800 -> 8-9,
    1000 -> 5 fallbacks of 160 photographs, at 9.3 / 11.3 / 13.0 ms median).
    """

    n_features: int = 800
    keep_fraction: float = 0.15
    ransac_threshold: float = 3.0
    min_inliers: int = 12
    max_scale_change: float = 2.0  # reject warps that shrink/grow the image area more than this
    max_perspective: float = 2e-3  # |h31|, |h32| per pixel: beyond this the warp folds the image
    blur_sigma: float = 0.0  # smooth before detection so fine periodic texture (weave) yields fewer ambiguous corners
    # Detect and describe on the grey image resized by this factor (0.5 = a quarter of the pixels, ~4x
    # faster ORB); key points are scaled back, so RANSAC, the re-fit and the homography stay in
    # full-resolution pixels.
    detect_scale: float = 1.0
    # ORB's scale pyramid (OpenCV default 8 levels x 1.2): garments are photographed at nearly one
    # scale, so fewer levels find the same matches in less time.
    pyramid_levels: int = 8
    # "guided" (coarse ECC + guided matching, for repetitive prints) or "ransac" (the authors' recipe).
    method: str = "guided"
    # Normalised correlation of gradient energy (reference vs warped image, 64 px) below which a warp is
    # rejected as wrong. Measured on SyntheticGPD: right warps >= 0.9, warps off by > 60 px <= 0.8.
    min_agreement: float = 0.8
    candidates_per_point: int = 5  # guided: the k nearest reference descriptors each key point may pair with

    def __post_init__(self) -> None:
        """Reject an unknown method at construction (a typo would otherwise surface at the first image)."""
        if self.method not in ALIGN_METHODS:
            msg = f"ORBSettings.method must be one of {ALIGN_METHODS}, got '{self.method}'."
            raise ValueError(msg)


def orb_settings(value: ORBSettings | dict[str, Any] | None) -> ORBSettings:
    """``ORBSettings`` from itself, a mapping of its fields (a YAML ``orb:`` block) or None (the defaults)."""
    return as_settings(ORBSettings, value)


ALIGN_METHODS = ("guided", "ransac")
COARSE_SIZE = 64  # px: the side of the gradient-energy images of the coarse stage and the agreement check
GUIDED_RADII = (24.0, 8.0, 3.0)  # px at 512: matches kept around the current warp's prediction, coarse to fine


ReferenceChoice = Literal["best", "first"]  # which training image the others are aligned to
