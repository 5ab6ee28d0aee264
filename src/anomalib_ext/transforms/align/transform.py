"""``ORBAlign``: alignment as a torchvision-v2 transform (image and masks), for any dataset."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform

from anomalib_ext.transforms.align.batch import BatchAligner
from anomalib_ext.transforms.align.settings import AlignmentResult, ORBSettings
from anomalib_ext.transforms.align.warp import warp_tensor

logger = logging.getLogger(__name__)


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
