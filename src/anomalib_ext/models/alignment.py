"""The alignment's arguments and host step, written once for every model that aligns its images.

:class:`AlignmentMixin` takes ``orb``, ``reference`` and ``fill_from_reference`` in a cooperative
``__init__`` (the rest goes on to the model class) and builds the ``align`` host step from the model's
reference image. AMFS aligns inside its own ``fit()`` (its reference is a buffer of its network, whose
graph fills unseen pixels from it); :class:`~anomalib_ext.models.aligned.AlignedMixin` puts any anomalib
model behind it (AlignedPatchcore, AlignedPNI, ``aligned(Model)``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from anomalib_ext.host_steps import HostPipeline
from anomalib_ext.models.base import HostStepsMixin
from anomalib_ext.models.legacy import Removed
from anomalib_ext.settings import check_choice
from anomalib_ext.transforms.align import (
    AlignmentStep,
    BatchAligner,
    ORBSettings,
    ReferenceChoice,
    choose_reference,
    orb_settings,
)


class AlignmentMixin(HostStepsMixin):
    """Alignment to a reference training image as the model's host step.

    Args:
        orb: alignment settings (:class:`ORBSettings` or a mapping of its fields; default: guided ORB
            matching with the agreement check).
        reference: ``best`` (the training image, of the first few, the others align to with most inliers)
            or ``first``.
        fill_from_reference: where an aligned image has no pixels (outside the photograph's borders), show
            the reference there instead of repeating the photograph's edge pixels. None: the model's default
            (``default_fill_from_reference``: AMFS True, whose graph fills and leaves those cells out of the
            score; the aligned anomalib models False, measured better: the seam between photo and reference
            fill made normal images peak at the border, see PNI's README).
        **kwargs: the model class's arguments.
    """

    default_fill_from_reference: ClassVar[bool] = False
    legacy_arguments: ClassVar[dict[str, Any]] = {"match_fill_light": Removed(value=False)}  # models/legacy.py

    def __init__(
        self,
        *args,
        orb: ORBSettings = ORBSettings(),
        reference: ReferenceChoice = "best",
        fill_from_reference: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.orb = orb_settings(orb)  # a YAML `orb:` block arrives as a dict outside anomalib's CLI
        self.reference_mode = check_choice("reference", reference, ReferenceChoice)
        default = self.default_fill_from_reference
        self.fill_from_reference = default if fill_from_reference is None else fill_from_reference
        self._host_steps: HostPipeline | None = None  # built from the reference on first use

    # Where the reference lives and whether the model aligns at all are the model's own.
    def alignment_reference(self) -> torch.Tensor:
        """(H, W, 3) uint8 reference image (empty before training)."""
        raise NotImplementedError

    def aligns(self) -> bool:  # ruff: ignore[no-self-use] - models override it
        """Whether the host steps align (AMFS: not with ``align=False`` or after its global-bank fallback)."""
        return True

    def marks_unseen(self) -> bool:  # ruff: ignore[no-self-use] - models override it
        """Whether the step marks pixels the photograph did not show, for a graph that fills them itself."""
        return False

    def choose_reference(self, images: list[torch.Tensor]) -> int:
        """Index of the reference among (3, H, W) training images, as ``reference`` says."""
        return choose_reference(images, self.reference_mode, self.orb)

    def host_steps(self) -> HostPipeline:
        """The ``align`` step to the reference (none when the model does not align)."""
        if not self.aligns():
            return HostPipeline()
        if self._host_steps is None:
            reference = self.alignment_reference()
            if reference.numel() == 0:
                msg = f"{type(self).__name__} has no alignment reference yet: train it (or load a checkpoint) first."
                raise RuntimeError(msg)
            step = AlignmentStep(
                reference.cpu().numpy(),
                self.orb,
                fill_from_reference=self.fill_from_reference,
                mark_unseen=self.marks_unseen(),
            )
            self._host_steps = HostPipeline([step])
        return self._host_steps

    def aligner(self) -> BatchAligner | None:
        """The alignment step's aligner (failure counts, fill image), or None without alignment.

        A method, not a property: tracing inspects every attribute of the module.
        """
        steps = self.host_steps().steps
        return steps[0].aligner if steps and isinstance(steps[0], AlignmentStep) else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The host steps are rebuilt from the loaded reference on first use."""
        super().on_load_checkpoint(checkpoint)
        self._host_steps = None
