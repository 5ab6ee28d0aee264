"""The ``guided`` estimator: a coarse warp from gradient energy, then ORB matches only where it predicts them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from anomalib_ext.transforms.align.images import ReferenceFeatures, gradient_energy, keypoint_array
from anomalib_ext.transforms.align.ransac import check_homography
from anomalib_ext.transforms.align.settings import COARSE_SIZE, GUIDED_RADII, AlignmentResult, ORBSettings

logger = logging.getLogger(__name__)

CONFIDENT_AGREEMENT = 0.9  # stop trying hypotheses once a warp agrees this well with the reference


def _coarse_scale(shape: tuple[int, int]) -> np.ndarray:
    """Full-resolution pixels -> COARSE_SIZE pixels."""
    return np.diag([COARSE_SIZE / shape[1], COARSE_SIZE / shape[0], 1.0])


def coarse_homography(energy: np.ndarray, reference: ReferenceFeatures) -> np.ndarray | None:
    """Input -> reference homography (full resolution) by ECC on gradient energy; None if ECC does not converge.

    A phase correlation gives ECC its starting shift, so shifts beyond ECC's basin are found too.
    """
    (dx, dy), _ = cv2.phaseCorrelate(reference.energy, energy)
    warp = np.float32([[1, 0, dx], [0, 1, dy], [0, 0, 1]])
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    try:  # ECC finds the warp reference -> input
        _, warp = cv2.findTransformECC(reference.energy, energy, warp, cv2.MOTION_HOMOGRAPHY, criteria, None, 1)
    except cv2.error:  # "images may be uncorrelated or non-overlapped", or a singular update
        return None
    scale = _coarse_scale(reference.shape)
    inverse = np.linalg.inv(warp.astype(np.float64))
    return np.linalg.inv(scale) @ inverse @ scale


def agreement(homography: np.ndarray, energy: np.ndarray, reference: ReferenceFeatures) -> float:
    """Normalised correlation of the reference's gradient energy and the warped input's, over their overlap.

    -1 where the warp leaves less than half the reference covered.
    """
    scale = _coarse_scale(reference.shape)
    warped = cv2.warpPerspective(
        energy,
        scale @ homography @ np.linalg.inv(scale),
        (COARSE_SIZE, COARSE_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=np.nan,
    )
    covered = np.isfinite(warped)
    if covered.mean() < 0.5:
        return -1.0
    a = warped[covered] - warped[covered].mean()
    b = reference.energy[covered] - reference.energy[covered].mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else -1.0


def _candidate_pairs(
    keypoints: Sequence[cv2.KeyPoint],
    descriptors: np.ndarray,
    reference: ReferenceFeatures,
) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) input and reference positions of every key point paired with each of its k nearest descriptors."""
    rows = reference.knn_matcher.knnMatch(descriptors, reference.descriptors, k=reference.settings.candidates_per_point)
    pairs = np.array([(m.queryIdx, m.trainIdx) for row in rows for m in row], dtype=np.int64).reshape(-1, 2)
    points = keypoint_array(keypoints, reference.settings)
    return points[pairs[:, 0]], reference.points[pairs[:, 1]]


def guided_fit(
    homography: np.ndarray,
    source: np.ndarray,
    target: np.ndarray,
    settings: ORBSettings,
    image_side: int,
) -> tuple[np.ndarray, int] | None:
    """Re-fit a homography on the candidate pairs it explains, with a shrinking radius; None if too few.

    Returns the homography and its inliers (pairs within the RANSAC threshold) at the final radius.
    """
    radii = [r * image_side / 512 for r in GUIDED_RADII]
    inliers, kept = 0, np.zeros(0, dtype=np.int64)
    for radius in radii:
        predicted = cv2.perspectiveTransform(source.reshape(-1, 1, 2), homography).reshape(-1, 2)
        close = np.linalg.norm(predicted - target, axis=1) < radius
        if close.sum() < settings.min_inliers:
            return None
        threshold = min(radius, settings.ransac_threshold)
        refit, mask = cv2.findHomography(source[close], target[close], cv2.RANSAC, threshold)
        if refit is None or mask is None:
            return None
        homography, inliers = refit, int(mask.sum())
        kept = close.nonzero()[0][mask.ravel() > 0]
    if inliers < settings.min_inliers:
        return None
    # Least squares on every inlier of the last round: RANSAC's model is fitted to 4 of them only.
    least_squares, _ = cv2.findHomography(source[kept], target[kept], 0)
    return (least_squares if least_squares is not None else homography), inliers


def _similarity_hypothesis(source: np.ndarray, target: np.ndarray, image_side: int) -> np.ndarray | None:
    """A 4-DOF similarity from the consensus of all candidate pairs (2-point RANSAC: copes with ~10% inliers)."""
    if len(source) < 2:
        return None
    similarity, _ = cv2.estimateAffinePartial2D(
        source,
        target,
        method=cv2.RANSAC,
        ransacReprojThreshold=6.0 * image_side / 512,
        maxIters=4000,
        confidence=0.999,
    )
    if similarity is None:
        return None
    return np.vstack([similarity, [0.0, 0.0, 1.0]])


def estimate_guided(
    full: np.ndarray,
    keypoints: Sequence[cv2.KeyPoint],
    descriptors: np.ndarray | None,
    reference: ReferenceFeatures,
) -> tuple[AlignmentResult, float]:
    """Coarse ECC warp -> guided matching; other hypotheses only if the result disagrees with the reference.

    Returns the result and its agreement with the reference.
    """
    s = reference.settings
    identity = np.eye(3)
    if descriptors is None or reference.descriptors is None or len(keypoints) < 4:
        return AlignmentResult(identity, ok=False, inliers=0, reason="too few key points"), -1.0
    energy = gradient_energy(full)
    source, target = _candidate_pairs(keypoints, descriptors, reference)
    side = max(reference.shape)
    best: tuple[float, int, np.ndarray] | None = None
    hypotheses = (
        lambda: coarse_homography(energy, reference),
        lambda: _similarity_hypothesis(source, target, side),
        lambda: identity,
    )
    for make in hypotheses:
        start = make()
        fitted = guided_fit(start, source, target, s, side) if start is not None else None
        if fitted is None:
            continue
        homography, inliers = fitted
        if check_homography(homography, full.shape[:2], s):
            continue  # an insane warp (folds, extreme perspective or scale): try the next hypothesis
        score = agreement(homography, energy, reference)
        if best is None or (score, inliers) > best[:2]:
            best = (score, inliers, homography)
        if score >= CONFIDENT_AGREEMENT:
            break  # the usual case: the coarse warp was right; the other hypotheses cost time only
    if best is None:
        reason = "no sane warp explains enough matches (repetitive or featureless image?)"
        return AlignmentResult(identity, ok=False, inliers=0, reason=reason), -1.0
    score, inliers, homography = best
    return AlignmentResult(homography / homography[2, 2], ok=True, inliers=inliers), score
