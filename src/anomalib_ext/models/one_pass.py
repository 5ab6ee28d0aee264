"""What the plugin's memory-bank models share with anomalib: one pass collects, ``fit()`` builds.

AMFS and PNI (like anomalib's Patchcore) see every training image once, keep what they need, and build
their banks and small learned parts in ``fit()`` (anomalib's ``MemoryBankMixin`` calls it): no
Lightning optimiser, one epoch, one device. Their networks normalise images themselves (AMFS after
alignment), so the pre-processor only resizes.
"""

from __future__ import annotations

from typing import Any

from anomalib import LearningType

from anomalib_ext.models.processing import ResizeOnlyProcessingMixin


class OnePassFitMixin(ResizeOnlyProcessingMixin):
    """Mixed in before ``MemoryBankMixin, AnomalibModule``; ``default_image_size`` is the model's own."""

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
