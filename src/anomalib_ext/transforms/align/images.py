"""Image conversions and the reference's ORB features (grey detection images, HWC arrays)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from anomalib_ext.transforms.align.settings import COARSE_SIZE, ORBSettings

logger = logging.getLogger(__name__)


def detection_image(gray: np.ndarray, settings: ORBSettings) -> np.ndarray:
    """The grey uint8 image ORB runs on (from :func:`to_gray_uint8`), resized by ``detect_scale``, maybe smoothed."""
    if settings.detect_scale != 1.0:  # ruff: ignore[float-equality-comparison] - 1.0 exactly is the documented "no resize"
        gray = cv2.resize(gray, None, fx=settings.detect_scale, fy=settings.detect_scale, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(gray, (0, 0), settings.blur_sigma) if settings.blur_sigma > 0 else gray


def planes_to_hwc(tensor: torch.Tensor) -> np.ndarray:
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
        return gray_of_float_hwc(planes_to_hwc(image.detach().cpu()))
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


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] or uint8 tensor -> HxWx3 uint8 array."""
    array = image.detach().cpu()
    if array.dtype != torch.uint8:
        array = (array.clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(1, 2, 0).numpy())
