"""What a model trained for many epochs in Lightning's own loop shares (PRN, MFFA, MSPBA).

Mixed in as ``class Model(GradientTrainedMixin, AnomalibModule)`` (``GradientTrainedMixin`` is a
:class:`~anomalib_ext.models.base.HostStepsMixin`), as anomalib's EfficientAd is built: the model writes
``configure_optimizers`` and a ``training_step`` that returns the loss and logs each term with
``self.log``; Lightning runs the epochs. Users then get Lightning's progress bar, the Engine's loggers
(TensorBoard, MLflow), checkpoint-and-resume (``--ckpt_path``) and multi-device training.

Epochs: the trainer's ``max_epochs``. anomalib's Engine lets a model's ``trainer_arguments`` override
the user's trainer arguments, so the mixin does not put ``max_epochs`` there; where the user set none
(``--trainer.max_epochs`` absent: Lightning's stand-in of 1000), the model's ``default_max_epochs``
applies at fit start, and the log says so. Input checks run in :meth:`check_training_data`, called
from ``on_train_start`` before the first step.

Seeds: a model with a ``seed`` attribute has the global RNGs seeded from (seed, epoch) before every
epoch's shuffled order and anything its training steps draw (synthetic anomalies):
a run resumed from a mid-training checkpoint then draws what the uninterrupted run drew, and ends with
the same weights (tested).
"""

from __future__ import annotations

import logging
import random
from typing import Any, ClassVar

import numpy as np
import torch
from anomalib import LearningType

from anomalib_ext.models.base import HostStepsMixin
from anomalib_ext.models.processing import ResizeOnlyProcessingMixin

logger = logging.getLogger(__name__)

LIGHTNING_DEFAULT_MAX_EPOCHS = 1000  # what Lightning sets when neither max_epochs nor max_steps is given


class GradientTrainedMixin(ResizeOnlyProcessingMixin, HostStepsMixin):
    """Lightning-trained model defaults: resize-only pre-processor, anomalib's post-processor, the epoch default."""

    default_max_epochs: ClassVar[int] = 10  # a model sets its own: what trains on the 2-core CPU

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity check (an untrained model's validation says nothing); epochs stay the user's."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class by default; a model trained with a few real anomalies says so."""
        return LearningType.ONE_CLASS

    def check_training_data(self) -> None:
        """Refuse unusable training data before any long work (override; the default checks nothing)."""

    def on_fit_start(self) -> None:
        """The model's epoch default where the user set none."""
        super().on_fit_start()
        loop = self.trainer.fit_loop
        if loop.max_epochs == LIGHTNING_DEFAULT_MAX_EPOCHS and self.trainer.max_steps == -1:
            loop.max_epochs = self.default_max_epochs
            logger.info(
                "%s trains for %d epochs (its default; set --trainer.max_epochs to change it).",
                type(self).__name__,
                self.default_max_epochs,
            )

    def seed_epoch(self, epoch: int, stream: int = 0) -> None:
        """Seed the global RNGs from (seed, epoch, stream), if the model has a ``seed``."""
        seed = getattr(self, "seed", None)
        if seed is not None:
            epoch_seed = int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])
            random.seed(epoch_seed)
            np.random.seed(epoch_seed)  # ruff: ignore[numpy-legacy-random] - what anomalib's synthesis draws from
            torch.manual_seed(epoch_seed)

    def on_train_epoch_start(self) -> None:
        """Seed what the epoch's steps draw (the order was drawn already): hooks between epochs may draw too."""
        super().on_train_epoch_start()
        self.seed_epoch(self.current_epoch, stream=1)

    def on_train_epoch_end(self) -> None:
        """Seed the next epoch now: its shuffled order is drawn before ``on_train_epoch_start``."""
        super().on_train_epoch_end()
        self.seed_epoch(self.current_epoch + 1)

    def on_train_start(self) -> None:
        """Input checks first; then the first epoch of this run seeded (a resumed run starts mid-way)."""
        super().on_train_start()
        self.check_training_data()
        self.seed_epoch(self.current_epoch)
