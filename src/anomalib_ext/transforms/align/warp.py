"""Warping images and masks by a homography, with a fill where the warped image has no pixels."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from anomalib_ext.transforms.align.estimate import estimate_homography
from anomalib_ext.transforms.align.images import ReferenceFeatures, planes_to_hwc
from anomalib_ext.transforms.align.settings import AlignmentResult

logger = logging.getLogger(__name__)


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
    array = planes_to_hwc(source) if channels_first else source.contiguous().numpy()
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if fill is not None:
        fill = fill.detach().cpu().to(source.dtype)
        destination = planes_to_hwc(fill) if channels_first else fill.numpy().copy()
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
