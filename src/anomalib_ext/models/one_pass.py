"""What the plugin's memory-bank models share with anomalib: one pass collects, ``fit()`` builds.

AMFS and PNI (like anomalib's Patchcore) see every training image once, keep what they need, and build
their banks and small learned parts in ``fit()`` (anomalib's ``MemoryBankMixin`` calls it): no
Lightning optimiser, one epoch, one device. Their networks normalise images themselves (AMFS after
alignment), so the pre-processor only resizes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from anomalib import LearningType
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Resize


class OnePassFitMixin:
    """Mixed in before ``MemoryBankMixin, AnomalibModule``; ``default_image_size`` is the model's own."""

    default_image_size: ClassVar[tuple[int, int]] = (256, 256)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only (to ``default_image_size`` unless given); ImageNet normalisation is inside the model."""
        return PreProcessor(transform=Compose([Resize(image_size or cls.default_image_size, antialias=True)]))

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """Anomalib's default: thresholds from validation, scores and maps normalised to 0.5 = threshold."""
        return PostProcessor()

    @staticmethod
    def configure_optimizers() -> None:
        """None: everything is built in ``fit()``, not by Lightning's optimiser loop."""
        return

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One pass over the training data; no gradient clipping, no sanity check."""
        return {"gradient_clip_val": 0, "max_epochs": 1, "num_sanity_val_steps": 0, "devices": 1}

    @property
    def learning_type(self) -> LearningType:
        """One-class: normal images only."""
        return LearningType.ONE_CLASS
