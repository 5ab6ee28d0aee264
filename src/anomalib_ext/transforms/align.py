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

``ORBAlign`` (a torchvision transform: image + mask), ``BatchAligner`` (batches, failure counts, maps
warped back), ``choose_reference`` and ``AlignmentStep``: the ``align`` host step any model can use.

The homography maps input pixels into the reference frame. When alignment fails (too few matches
or inliers, a degenerate or extreme matrix) the identity is used and the failure is reported in
the returned :class:`AlignmentResult` (and logged once per transform) — never a crash or a garbage warp.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform

from anomalib_ext.host_steps import HostStep, register_host_step

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
    if value is None:
        return ORBSettings()
    if isinstance(value, ORBSettings):
        return value
    known = {f.name for f in dataclasses.fields(ORBSettings)}
    unknown = sorted(set(value) - known)
    if unknown:
        msg = f"Unknown alignment (orb) settings {unknown}; known: {sorted(known)}."
        raise ValueError(msg)
    return ORBSettings(**value)


ALIGN_METHODS = ("guided", "ransac")
COARSE_SIZE = 64  # px: the side of the gradient-energy images of the coarse stage and the agreement check
GUIDED_RADII = (24.0, 8.0, 3.0)  # px at 512: matches kept around the current warp's prediction, coarse to fine


def detection_image(gray: np.ndarray, settings: ORBSettings) -> np.ndarray:
    """The grey uint8 image ORB runs on (from :func:`to_gray_uint8`), resized by ``detect_scale``, maybe smoothed."""
    if settings.detect_scale != 1.0:  # ruff: ignore[float-equality-comparison] - 1.0 exactly is the documented "no resize"
        gray = cv2.resize(gray, None, fx=settings.detect_scale, fy=settings.detect_scale, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(gray, (0, 0), settings.blur_sigma) if settings.blur_sigma > 0 else gray


def _planes_to_hwc(tensor: torch.Tensor) -> np.ndarray:
    """CxHxW CPU tensor -> a new HxWxC contiguous array (never a view: callers may write into it).

    cv2.merge does this copy ~5x faster than a transpose.
    """
    planes = tensor.contiguous().numpy()
    return cv2.merge(list(planes)) if planes.shape[0] > 1 else planes[0].copy()


def gray_of_float_hwc(image: np.ndarray) -> np.ndarray:
    """HxW uint8 grey from an HxWx3 float32 RGB array in [0, 1] or [0, 255]."""
    largest = cv2.minMaxLoc(image.reshape(image.shape[0], -1))[1]
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.convertScaleAbs(gray, alpha=255.0 if largest <= 1.0 else 1.0)  # rounds and saturates


def to_gray_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """HxW uint8 grey from HxWx3 / HxW arrays or CxHxW tensors in [0, 1] or [0, 255]."""
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.float32:
        return gray_of_float_hwc(_planes_to_hwc(image.detach().cpu()))
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        array = array.transpose(1, 2, 0) if array.ndim == 3 else array
    else:
        array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array * 255 if array.max() <= 1.0 else array, 0, 255).astype(np.uint8)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2GRAY) if array.shape[2] == 3 else array[..., 0]
    return array


class ReferenceFeatures:
    """ORB key points of a reference image, computed once and reused for every image aligned to it."""

    def __init__(self, reference: np.ndarray | torch.Tensor, settings: ORBSettings = ORBSettings()) -> None:
        self.settings = settings
        full = to_gray_uint8(reference)
        self.full_shape = full.shape[:2]
        self.gray = detection_image(full, settings)
        self.orb = cv2.ORB_create(nfeatures=settings.n_features, nlevels=settings.pyramid_levels)
        self.keypoints, self.descriptors = self.orb.detectAndCompute(self.gray, None)
        self.points = keypoint_array(self.keypoints, settings)
        # OpenCV's matcher on purpose: a numpy matmul of descriptor bits gives the same matches faster in
        # isolation, but BLAS threads left spinning slowed the OpenVINO inference that follows (~40 ms).
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        self.knn_matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.energy = gradient_energy(full)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the reference at full resolution: the frame images are aligned into."""
        return self.full_shape


def keypoint_array(keypoints: Sequence[cv2.KeyPoint], settings: ORBSettings) -> np.ndarray:
    """(K, 2) key point positions in full-resolution pixels."""
    points = np.float32([kp.pt for kp in keypoints]).reshape(-1, 2)
    return points / settings.detect_scale if settings.detect_scale != 1.0 else points  # ruff: ignore[float-equality-comparison] - as above


def _check_homography(h: np.ndarray, shape: tuple[int, int], settings: ORBSettings) -> str:
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


def _estimate_ransac(
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
    reason = _check_homography(homography, shape, s)  # the input's corners, at full resolution
    if reason:
        return AlignmentResult(identity, ok=False, inliers=inliers, reason=reason)
    return AlignmentResult(homography / homography[2, 2], ok=True, inliers=inliers)


def gradient_energy(gray: np.ndarray) -> np.ndarray:
    """COARSE_SIZE x COARSE_SIZE float32 map of smoothed gradient magnitude of an HxW uint8 grey image.

    Edges of the print survive; smooth lighting (no gradient) and fine weave (blurred away before the
    gradient) do not, so two photographs of one print correlate here whatever their exposure.
    """
    small = cv2.resize(gray, (COARSE_SIZE, COARSE_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 0.7)
    gx, gy = cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1)
    # numpy's sqrt, not cv2.magnitude: OpenCV's SIMD square root differs in the last bit with the array's
    # memory alignment, which changed alignments between processes (measured) — and an Inferencer must
    # align exactly as the model did.
    return cv2.GaussianBlur(np.sqrt(gx * gx + gy * gy), (0, 0), 1.5)


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


def _estimate_guided(
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
        if _check_homography(homography, full.shape[:2], s):
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


CONFIDENT_AGREEMENT = 0.9  # guided: stop trying hypotheses once a warp agrees this well with the reference


def estimate_homography(image: np.ndarray | torch.Tensor, reference: ReferenceFeatures) -> AlignmentResult:
    """Homography from ``image`` to the reference frame, with a robust identity fallback.

    Whatever the method, a warp must pass the sanity checks (scale, perspective, folding; inside each
    method) and agree with the reference (``min_agreement``); otherwise the identity is returned with the reason.
    """
    s = reference.settings
    full = to_gray_uint8(image)
    keypoints, descriptors = reference.orb.detectAndCompute(detection_image(full, s), None)
    if s.method == "guided":
        result, score = _estimate_guided(full, keypoints, descriptors, reference)
    else:
        result = _estimate_ransac(full.shape[:2], keypoints, descriptors, reference)
        score = agreement(result.homography, gradient_energy(full), reference) if result.ok else -1.0
    if result.ok and score < s.min_agreement:
        reason = f"the warped image does not match the reference (agreement {score:.2f} < {s.min_agreement})"
        return AlignmentResult(np.eye(3), ok=False, inliers=result.inliers, reason=reason)
    return result


def warp_onto(
    source: np.ndarray, homography: np.ndarray, destination: np.ndarray, *, flags: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Warp an HxW[xC] array into ``destination`` (its size, in place) and return it.

    BORDER_TRANSPARENT leaves the destination where the source has no pixels: a fill in one pass, no mask.
    """
    h, w = destination.shape[:2]
    return cv2.warpPerspective(
        source, homography, (w, h), dst=destination, flags=flags, borderMode=cv2.BORDER_TRANSPARENT
    )


LIGHT_GRID = 32  # cells per side of the light fit: coarse enough that print edges and noise average out
LIGHT_GAIN_LIMITS = (0.5, 2.0)  # a fitted gain outside these is a bad fit (too little seen), not light


def fill_light_gain(aligned: np.ndarray, reference: np.ndarray, outside: np.ndarray) -> np.ndarray | None:
    """HxWx3 gain that lights ``reference`` as the photograph in ``aligned`` is lit; None if too little is seen.

    Light is modelled per channel as a planar field of log gain (a global level and a linear gradient: the
    smooth light fall-off of a photograph; fine structure is the print, not light). It is fitted by least
    squares on a ``LIGHT_GRID`` grid of cell means where the cell is fully seen (``outside`` == 0), then
    once more without the worst fifth of the cells (misregistered print edges, defects).
    """
    h, w = outside.shape
    seen = cv2.resize(1.0 - outside.astype(np.float32), (LIGHT_GRID, LIGHT_GRID), interpolation=cv2.INTER_AREA) > 0.999
    if seen.sum() < LIGHT_GRID:  # less than a row's worth of seen cells: no trustworthy fit
        return None
    cells = (LIGHT_GRID, LIGHT_GRID)
    ratio = np.log(cv2.resize(aligned, cells, interpolation=cv2.INTER_AREA) + 1e-3) - np.log(
        cv2.resize(reference, cells, interpolation=cv2.INTER_AREA) + 1e-3
    )
    centres = (np.arange(LIGHT_GRID) + 0.5) / LIGHT_GRID - 0.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    design = np.stack([np.ones_like(xx), xx, yy], -1)[seen]  # (n, 3)
    target = ratio[seen]  # (n, 3 channels)
    coefficients = np.linalg.lstsq(design, target, rcond=None)[0]
    residual = np.abs(design @ coefficients - target).max(1)
    keep = residual <= np.quantile(residual, 0.8)
    coefficients = np.linalg.lstsq(design[keep], target[keep], rcond=None)[0]  # (3 terms, 3 channels)
    ys, xs = (np.arange(h) + 0.5) / h - 0.5, (np.arange(w) + 0.5) / w - 0.5
    log_gain = coefficients[0] + xs[None, :, None] * coefficients[1] + ys[:, None, None] * coefficients[2]
    return np.clip(np.exp(log_gain), *LIGHT_GAIN_LIMITS).astype(np.float32)


def warp_tensor(
    tensor: torch.Tensor,
    homography: np.ndarray,
    size: tuple[int, int],
    *,
    nearest: bool = False,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warp a CxHxW (or HxW) tensor by a homography into an output of ``size`` (H, W).

    Output pixels that map outside the input are: the edge pixels repeated (images), zero (``nearest``,
    masks), or — with ``fill``, a tensor of the output's shape — taken from ``fill``.
    """
    source = tensor.detach().cpu()
    channels_first = source.ndim == 3
    array = _planes_to_hwc(source) if channels_first else source.contiguous().numpy()
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if fill is not None:
        fill = fill.detach().cpu().to(source.dtype)
        destination = _planes_to_hwc(fill) if channels_first else fill.numpy().copy()
        warped = warp_onto(array, homography, destination, flags=flags)
    else:
        warped = cv2.warpPerspective(
            array,
            homography,
            (size[1], size[0]),
            flags=flags,
            borderMode=cv2.BORDER_REPLICATE if not nearest else cv2.BORDER_CONSTANT,
        )
    if not channels_first:
        return torch.from_numpy(warped).to(tensor.dtype)
    result = torch.from_numpy(warped[..., None] if warped.ndim == 2 else warped)
    return result.permute(2, 0, 1).contiguous().to(tensor.dtype)


def align(
    image: torch.Tensor,
    reference: ReferenceFeatures,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, AlignmentResult]:
    """Functional API: ``(aligned_image, aligned_mask, AlignmentResult)`` in the reference frame."""
    result = estimate_homography(image, reference)
    size = reference.shape
    aligned = warp_tensor(image, result.homography, size)
    aligned_mask = warp_tensor(mask, result.homography, size, nearest=True) if mask is not None else None
    return aligned, aligned_mask, result


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] or uint8 tensor -> HxWx3 uint8 array."""
    array = image.detach().cpu()
    if array.dtype != torch.uint8:
        array = (array.clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(1, 2, 0).numpy())


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


class BatchAligner:
    """Aligns images to a reference image, counts the failures, and warps maps back.

    Args:
        reference: HxWx3 uint8 RGB (or a CxHxW tensor): the frame images are aligned into.
        settings: ORB / RANSAC / sanity-check settings.
        fill_from_reference: where the warped input has no pixels (outside its borders), show the reference:
            a normal view of that spot, instead of smeared edge pixels that every k-NN bank would call anomalous.
        mark_unseen: write :data:`UNSEEN` there instead (float images only), for a model that fills the
            reference in itself and also wants to know which pixels the photograph did not show
            (:meth:`anomalib_ext.models.amfs.torch_model.AMFSModel.fill_unseen`).
        match_fill_light: light the reference fill as the photograph is lit (:func:`fill_light_gain`), so the
            seam between photo and fill has no light step (each photograph has its own light). Needs
            ``fill_from_reference`` and no ``mark_unseen``.
    """

    def __init__(
        self,
        reference: np.ndarray | torch.Tensor,
        settings: ORBSettings,
        *,
        fill_from_reference: bool = True,
        mark_unseen: bool = False,
        match_fill_light: bool = False,
    ) -> None:
        if match_fill_light and (not fill_from_reference or mark_unseen):
            msg = "match_fill_light lights the reference fill: it needs fill_from_reference=True and no mark_unseen."
            raise ValueError(msg)
        self.match_fill_light = match_fill_light
        self.reference = ReferenceFeatures(reference, settings)
        image = np.ascontiguousarray(reference if isinstance(reference, np.ndarray) else to_uint8_hwc(reference))
        self.fill = torch.from_numpy(image).permute(2, 0, 1).float().div(255) if fill_from_reference else None
        self.mark_unseen = mark_unseen
        # What the warp writes onto, as HxWx3 float32 (the reference); None = no fill (edge pixels repeated).
        if self.fill is not None:
            self._below: np.ndarray | None = _planes_to_hwc(self.fill)
        elif mark_unseen:  # marks without the reference fill: the model fills unseen pixels itself
            self._below = np.zeros((*image.shape[:2], 3), np.float32)
        else:
            self._below = None
        self._marks = np.full((*image.shape[:2], 3), UNSEEN, np.float32) if mark_unseen else None
        self.failures = 0
        self.total = 0

    def estimate(self, image: np.ndarray | torch.Tensor) -> AlignmentResult:
        """The homography of one image; a failure (identity) is counted and the first one logged."""
        result = estimate_homography(image, self.reference)
        self.total += 1
        if not result.ok:
            self.failures += 1
            if self.failures == 1:
                logger.warning(
                    "Alignment fell back to the identity: %s (further failures counted in .failures)",
                    result.reason,
                )
        return result

    def align(self, images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, list[bool]]:
        """(B, 3, H, W) in [0, 1] -> aligned images (same size), homographies (B, 3, 3) input->reference, successes."""
        h, w = images.shape[-2:]
        if (h, w) != tuple(self.reference.shape):
            msg = f"Image size {(h, w)} differs from the reference {tuple(self.reference.shape)}; resize first."
            raise ValueError(msg)
        aligned, homographies, oks = [], [], []
        over_fill = images.dtype.is_floating_point and self._below is not None
        for image in images:
            # One HxWxC copy serves both the grey image ORB needs and the warp (both inside the deployed latency).
            hwc = _planes_to_hwc(image.detach().cpu().float()) if over_fill else None
            result = self.estimate(gray_of_float_hwc(hwc) if hwc is not None else image)
            if not result.ok:
                aligned.append(image.cpu())
            elif hwc is not None:
                aligned.append(self._warp_over_fill(hwc, result.homography).to(image.dtype))
            else:  # no fill (or uint8 images): the edge pixels are repeated
                aligned.append(warp_tensor(image, result.homography, (h, w)))
            homographies.append(result.homography)
            oks.append(result.ok)
        return torch.stack(aligned).to(images.device, images.dtype), np.stack(homographies), oks

    def _warp_over_fill(self, image: np.ndarray, homography: np.ndarray) -> torch.Tensor:
        """Warp an HxWx3 float32 image onto the fill (the reference) -> a (3, H, W) tensor.

        With ``mark_unseen`` every pixel outside the warped photo's outline becomes UNSEEN (after the warp, so
        no seen pixel is ever darkened by a mark). The fill is kept as an HxWx3 array, so each
        image costs one copy of it instead of a conversion (this is inside the deployed latency).
        """
        warped = warp_onto(image, homography, self._below.copy())
        if self.match_fill_light:
            outside = self._outside_photo(homography, image.shape[:2])
            gain = fill_light_gain(warped, self._below, outside)
            if gain is not None:
                cv2.copyTo(self._below * gain, outside, warped)  # in place, outside the photo only
        if self.mark_unseen:
            cv2.copyTo(self._marks, self._outside_photo(homography, image.shape[:2]), warped)  # in place
        return torch.from_numpy(warped).permute(2, 0, 1).contiguous()

    def _outside_photo(self, homography: np.ndarray, photo_size: tuple[int, int]) -> np.ndarray:
        """(H, W) uint8, 1 outside the warped photograph's outline.

        The photo's outline (pixel edges, -0.5 .. size - 0.5) mapped by the homography is a convex
        quadrilateral (the sanity checks reject folding warps): rasterising it costs far less than
        warping a coverage layer. OpenCV counts the pixels the outline's edge passes through as inside,
        so a row of pixels whose centres lie just outside it (up to about a pixel: the photo/fill blends
        of bilinear warping) is kept as seen; every pixel farther out is marked.
        """
        h, w = photo_size
        corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float64)
        outline = cv2.perspectiveTransform(corners[None], homography)[0]
        outside = np.ones(self._below.shape[:2], np.uint8)
        shift = 4  # sub-pixel precision of the outline: 1/16 px
        cv2.fillConvexPoly(outside, np.round(outline * (1 << shift)).astype(np.int32), 0, cv2.LINE_8, shift)
        return outside

    @staticmethod
    def warp_back(maps: torch.Tensor, homographies: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """(B, 1, H, W) maps in the reference frame -> the input frame (inverse homographies)."""
        size = tuple(maps.shape[-2:])
        back = [
            warp_tensor(m, np.linalg.inv(homography), size) for m, homography in zip(maps, homographies, strict=True)
        ]
        return torch.stack(back).to(maps.device, maps.dtype)


@register_host_step
class AlignmentStep(HostStep):
    """Host step ``align``: ORB alignment to a reference before the model, maps warped back after it.

    Any model can use it (AMFS does by default); its export folder holds the reference image and
    ``metadata.json`` its settings, so the Inferencer rebuilds the same step by name.
    """

    name = "align"
    REFERENCE_FILE = "align_reference.png"

    def __init__(
        self,
        reference: np.ndarray,
        settings: ORBSettings = ORBSettings(),
        *,
        fill_from_reference: bool = True,
        mark_unseen: bool = False,
        match_fill_light: bool = False,
    ) -> None:
        self.reference_image = np.ascontiguousarray(reference)  # (H, W, 3) uint8 RGB
        self.settings = settings
        self.fill_from_reference = fill_from_reference
        self.mark_unseen = mark_unseen
        self.match_fill_light = match_fill_light
        self.aligner = BatchAligner(
            self.reference_image,
            settings,
            fill_from_reference=fill_from_reference,
            mark_unseen=mark_unseen,
            match_fill_light=match_fill_light,
        )

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Aligned images and each image's homography (identity where alignment failed, counted in ``aligner``)."""
        aligned, homographies, _ = self.aligner.align(images)
        return aligned, list(homographies)

    def restore(self, maps: torch.Tensor, states: Sequence[np.ndarray]) -> torch.Tensor:  # ruff: ignore[no-self-use] - the protocol
        """Maps warped back into each input's frame."""
        return BatchAligner.warp_back(maps, states)

    def report(self) -> dict[str, Any]:
        """``align_fallbacks``: images that fell back to the identity, of all aligned so far."""
        return {"align_fallbacks": f"{self.aligner.failures}/{self.aligner.total}"}

    def save(self, folder: Path) -> dict[str, Any]:
        """The reference as a PNG (RGB) and the ORB settings."""
        if not cv2.imwrite(
            str(Path(folder) / self.REFERENCE_FILE),
            np.ascontiguousarray(self.reference_image[..., ::-1]),
        ):
            msg = f"Could not write the alignment reference {Path(folder) / self.REFERENCE_FILE}."
            raise OSError(msg)
        return {
            "reference": self.REFERENCE_FILE,
            "fill_from_reference": self.fill_from_reference,
            "mark_unseen": self.mark_unseen,
            "match_fill_light": self.match_fill_light,
            "orb": dataclasses.asdict(self.settings),
        }

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> AlignmentStep:
        """From an export folder: its reference image and settings (unknown ORB fields are ignored)."""
        from anomalib_ext.data.mvtec_like import read_rgb
        from anomalib_ext.export_format import ModelFilesError

        path = Path(folder) / config["reference"]
        if not path.is_file():
            msg = f"{path} (the alignment reference) is missing from {folder}: export the model again."
            raise ModelFilesError(msg)
        fields = {f.name for f in dataclasses.fields(ORBSettings)}
        settings = ORBSettings(**{k: v for k, v in config.get("orb", {}).items() if k in fields})
        return cls(
            read_rgb(path),
            settings,
            fill_from_reference=config.get("fill_from_reference", False),
            mark_unseen=config.get("mark_unseen", False),  # exports older than the option never marked
            match_fill_light=config.get("match_fill_light", False),  # nor lit the fill
        )


class ORBAlign(Transform):
    """torchvision-v2 transform that aligns images (and their masks, nearest) to a reference image.

    Args:
        reference: the reference image (CxHxW tensor in [0, 1] or HxWx3 uint8 array).
        settings: ORB / RANSAC / sanity-check settings.

    After each call, ``last_result`` holds the homography and whether alignment succeeded; failures
    fall back to the identity and are counted in ``failures``.
    """

    def __init__(self, reference: np.ndarray | torch.Tensor, settings: ORBSettings = ORBSettings()) -> None:
        super().__init__()
        self.aligner = BatchAligner(reference, settings, fill_from_reference=False)
        self.reference = self.aligner.reference
        self.last_result: AlignmentResult | None = None

    @property
    def failures(self) -> int:
        """How many images fell back to the identity."""
        return self.aligner.failures

    def forward(self, *inputs: Any) -> Any:  # ruff: ignore[any-type] - torchvision transforms take and return anything
        """Align the image among ``inputs`` and warp every tensor with it (masks nearest)."""
        flat = inputs if len(inputs) > 1 else (inputs[0],)
        image = next(x for x in flat if isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.Mask))
        result = self.aligner.estimate(image)
        self.last_result = result
        size = self.reference.shape
        outputs = []
        for x in flat:
            if isinstance(x, tv_tensors.Mask):
                outputs.append(
                    tv_tensors.Mask(warp_tensor(x.as_subclass(torch.Tensor), result.homography, size, nearest=True)),
                )
            elif isinstance(x, torch.Tensor):
                warped = warp_tensor(x.as_subclass(torch.Tensor), result.homography, size)
                outputs.append(tv_tensors.wrap(warped, like=x) if isinstance(x, tv_tensors.TVTensor) else warped)
            else:
                outputs.append(x)
        return tuple(outputs) if len(outputs) > 1 else outputs[0]
