"""The pre- and post-processing every plugin model configures: resize only, anomalib's post-processor.

Our networks normalise images themselves (AMFS after alignment, which needs pixels in [0, 1]), so the
pre-processor only resizes; ``default_image_size`` is each model's own.
"""

from __future__ import annotations

from typing import ClassVar

from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Resize


class ResizeOnlyProcessingMixin:
    """``configure_pre_processor`` (resize to ``default_image_size``) and anomalib's default post-processor."""

    default_image_size: ClassVar[tuple[int, int]] = (256, 256)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only (to ``default_image_size`` unless given); ImageNet normalisation is inside the model."""
        return PreProcessor(transform=Compose([Resize(image_size or cls.default_image_size, antialias=True)]))

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """Anomalib's default: thresholds from validation, scores and maps normalised to 0.5 = threshold."""
        return PostProcessor()
