"""I-RA on the host: choose a reference, align batches to it, warp maps back to the input frame."""

from __future__ import annotations

import logging

import numpy as np
import torch

from anomalib_ext.transforms.align import ORBSettings, ReferenceFeatures, estimate_homography, warp_tensor

logger = logging.getLogger(__name__)


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] or uint8 tensor -> HxWx3 uint8 array."""
    array = image.detach().cpu()
    if array.dtype != torch.uint8:
        array = (array.clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(1, 2, 0).numpy())


def choose_reference(images: list[torch.Tensor], mode: str, settings: ORBSettings, candidates: int = 8, probes: int = 8) -> int:
    """Index of the reference: ``first``, or ``best`` = the candidate others align to with most inliers."""
    if mode == "first" or len(images) < 3:
        return 0
    if mode != "best":
        raise ValueError(f"reference must be 'first' or 'best', got '{mode}'")
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
    logger.info("AMFS reference: training image %d (mean %.1f inliers)", best, best_inliers)
    return best


class BatchAligner:
    """Aligns (B, 3, H, W) batches in [0, 1] to a reference image and warps maps back."""

    def __init__(self, reference: np.ndarray, settings: ORBSettings, fill_from_reference: bool = True) -> None:
        self.reference = ReferenceFeatures(reference, settings)
        # Where the warped input has no pixels (outside its borders) the reference fills in: a normal
        # view of that spot, instead of smeared edge pixels that every k-NN bank would call anomalous.
        self.fill = torch.from_numpy(np.ascontiguousarray(reference)).permute(2, 0, 1).float().div(255) if fill_from_reference else None
        self.failures = 0
        self.total = 0

    def align(self, images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, list[bool]]:
        """Aligned images (same size), homographies (B, 3, 3) input->reference, success flags."""
        h, w = images.shape[-2:]
        aligned, homographies, oks = [], [], []
        if (h, w) != tuple(self.reference.shape):
            raise ValueError(f"Image size {(h, w)} differs from the reference {tuple(self.reference.shape)}; resize first.")
        for image in images:
            result = estimate_homography(image, self.reference)
            self.total += 1
            if not result.ok:
                self.failures += 1
                if self.failures == 1:
                    logger.warning("AMFS alignment fell back to identity: %s (counted in .failures)", result.reason)
            fill = self.fill.to(image.dtype) if self.fill is not None and image.dtype.is_floating_point else None
            aligned.append(warp_tensor(image, result.homography, (h, w), fill=fill) if result.ok else image.cpu())
            homographies.append(result.homography)
            oks.append(result.ok)
        return torch.stack(aligned).to(images.device, images.dtype), np.stack(homographies), oks

    @staticmethod
    def warp_back(maps: torch.Tensor, homographies: np.ndarray) -> torch.Tensor:
        """(B, 1, H, W) maps in the reference frame -> the input frame (inverse homographies)."""
        size = tuple(maps.shape[-2:])
        back = [warp_tensor(m, np.linalg.inv(homography), size) for m, homography in zip(maps, homographies, strict=True)]
        return torch.stack(back).to(maps.device, maps.dtype)
