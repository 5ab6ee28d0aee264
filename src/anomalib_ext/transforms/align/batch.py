"""Aligning batches to one reference: failure counts, the fill, the unseen marks, maps warped back."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from anomalib_ext.transforms.align.estimate import estimate_homography
from anomalib_ext.transforms.align.images import ReferenceFeatures, gray_of_float_hwc, planes_to_hwc, to_uint8_hwc
from anomalib_ext.transforms.align.settings import UNSEEN, AlignmentResult, ORBSettings
from anomalib_ext.transforms.align.warp import warp_onto, warp_tensor

logger = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        reference: np.ndarray | torch.Tensor,
        settings: ORBSettings,
        *,
        fill_from_reference: bool = True,
        mark_unseen: bool = False,
    ) -> None:
        self.reference = ReferenceFeatures(reference, settings)
        image = np.ascontiguousarray(reference if isinstance(reference, np.ndarray) else to_uint8_hwc(reference))
        self.fill = torch.from_numpy(image).permute(2, 0, 1).float().div(255) if fill_from_reference else None
        self.mark_unseen = mark_unseen
        # What the warp writes onto, as HxWx3 float32 (the reference); None = no fill (edge pixels repeated).
        if self.fill is not None:
            self._below: np.ndarray | None = planes_to_hwc(self.fill)
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
            hwc = planes_to_hwc(image.detach().cpu().float()) if over_fill else None
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
