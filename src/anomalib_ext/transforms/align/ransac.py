"""The ``ransac`` estimator (the AMFS authors' recipe) and the sanity checks every warp must pass."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from anomalib_ext.transforms.align.images import ReferenceFeatures, keypoint_array
from anomalib_ext.transforms.align.settings import AlignmentResult, ORBSettings

logger = logging.getLogger(__name__)


def check_homography(h: np.ndarray, shape: tuple[int, int], settings: ORBSettings) -> str:
    """Empty string if ``h`` is a sane warp of an image of this shape, else why not."""
    if not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-8:
        return "non-finite homography"
    h = h / h[2, 2]
    if abs(h[2, 0]) > settings.max_perspective or abs(h[2, 1]) > settings.max_perspective:
        return "extreme perspective"
    height, width = shape
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]]).reshape(-1, 1, 2)
    warped = cv2.perspectiveTransform(corners, h).reshape(-1, 2)
    area = cv2.contourArea(warped)
    if not cv2.isContourConvex(warped.astype(np.float32)) or area <= 0:
        return "degenerate homography (folds the image)"
    ratio = area / float(width * height)
    if not 1 / settings.max_scale_change <= ratio <= settings.max_scale_change:
        return f"extreme scale change ({ratio:.2f}x area)"
    return ""


def _refine(
    homography: np.ndarray,
    inliers: int,
    points: np.ndarray,
    reference: ReferenceFeatures,
    matches: Sequence[cv2.DMatch],
    s: ORBSettings,
) -> tuple[np.ndarray, int]:
    """Least-squares re-fit on every match (not only the best fraction) consistent with the RANSAC model.

    The best-distance matches pick the model robustly; the many weaker matches it explains then pin
    it down (measured: mean corner error 1.6 px -> below 1 px on 512 px images).
    """
    src = points[[m.queryIdx for m in matches]].reshape(-1, 1, 2)
    dst = reference.points[[m.trainIdx for m in matches]].reshape(-1, 1, 2)
    error = np.linalg.norm(cv2.perspectiveTransform(src, homography) - dst, axis=-1).ravel()
    consistent = error < s.ransac_threshold
    if consistent.sum() < max(inliers, s.min_inliers):
        return homography, inliers
    refined, _ = cv2.findHomography(src[consistent], dst[consistent], 0)
    return (homography, inliers) if refined is None else (refined, int(consistent.sum()))


def estimate_ransac(
    shape: tuple[int, int],
    keypoints: Sequence[cv2.KeyPoint],
    descriptors: np.ndarray | None,
    reference: ReferenceFeatures,
) -> AlignmentResult:
    """The AMFS authors' recipe: best fraction of cross-checked matches -> RANSAC -> re-fit on all consistent.

    ``shape``: (H, W) of the input at full resolution, for the sanity checks.
    """
    s = reference.settings
    identity = np.eye(3)
    if descriptors is None or reference.descriptors is None or len(keypoints) < 4:
        return AlignmentResult(identity, ok=False, inliers=0, reason="too few key points")
    all_matches = sorted(reference.matcher.match(descriptors, reference.descriptors), key=lambda m: m.distance)
    matches = all_matches[: max(int(len(all_matches) * s.keep_fraction), s.min_inliers)]
    if len(matches) < s.min_inliers:
        return AlignmentResult(identity, ok=False, inliers=0, reason=f"only {len(matches)} matches")
    points = keypoint_array(keypoints, s)
    src = points[[m.queryIdx for m in matches]].reshape(-1, 1, 2)
    dst = reference.points[[m.trainIdx for m in matches]].reshape(-1, 1, 2)
    homography, inlier_mask = cv2.findHomography(src, dst, cv2.RANSAC, s.ransac_threshold)
    inliers = int(inlier_mask.sum()) if inlier_mask is not None else 0
    if homography is None or inliers < s.min_inliers:
        return AlignmentResult(identity, ok=False, inliers=inliers, reason=f"only {inliers} RANSAC inliers")
    homography, inliers = _refine(homography, inliers, points, reference, all_matches, s)
    reason = check_homography(homography, shape, s)  # the input's corners, at full resolution
    if reason:
        return AlignmentResult(identity, ok=False, inliers=inliers, reason=reason)
    return AlignmentResult(homography / homography[2, 2], ok=True, inliers=inliers)
