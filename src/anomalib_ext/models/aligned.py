"""Align first, then any detector: anomalib models trained and deployed on images aligned to a reference.

``AlignedPatchcore`` (``anomalib train --model AlignedPatchcore``) is anomalib's Patchcore behind the
``align`` host step; :func:`aligned` builds the same for another anomalib model class::

    from anomalib.models import Padim
    from anomalib_ext.models import aligned
    model = aligned(Padim)(backbone="tf_efficientnet_lite0")

How it works (:class:`AlignedMixin`): the reference is chosen from the first training images in dataset
order (the one the others align to best, :func:`choose_reference`; the first batch where the trainer has
no datamodule), so a shuffling loader does not change it; every training batch is aligned before the wrapped
model's ``training_step`` sees it, and validation / test / predict / export go through the host-step
protocol (:class:`HostStepsMixin`): aligned in, maps warped back to each input's frame, and the
reference written beside the exported model so the Inferencer aligns the same way. The reference is a
checkpointed buffer. Images that fail to align pass through unaligned and are counted; if most training
images fail, the model says so (textures and freely rotating parts have nothing to register).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.models import Patchcore

from anomalib_ext.data.mvtec_like import resize_like_preprocessor
from anomalib_ext.export_format import model_input_size, normalize_step
from anomalib_ext.models.alignment import AlignmentMixin
from anomalib_ext.transforms.align import to_uint8_hwc

logger = logging.getLogger(__name__)

REFERENCE_CANDIDATES = 8  # first training images the reference is chosen from


class AlignedMixin(AlignmentMixin):
    """Mixed in before an anomalib model class: alignment to a reference training image around it.

    Takes the alignment's arguments (:class:`~anomalib_ext.models.alignment.AlignmentMixin`) and the model
    class's.
    """

    align_reference: torch.Tensor

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("align_reference", torch.empty(0, dtype=torch.uint8))  # (H, W, 3) once trained

    def alignment_reference(self) -> torch.Tensor:
        """The checkpointed reference buffer."""
        return self.align_reference

    def _set_reference(self, candidates: list[torch.Tensor]) -> None:
        index = self.choose_reference(candidates)
        self.align_reference = torch.from_numpy(to_uint8_hwc(candidates[index])).to(self.device)
        self._host_steps = None

    def on_train_start(self) -> None:
        """Choose the reference from the first training images in dataset order (at the model's input size)."""
        super().on_train_start()
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_data", None)
        if dataset is None or len(dataset) == 0:
            self.align_reference = torch.empty(0, dtype=torch.uint8, device=self.device)  # first batch decides
            return
        size = model_input_size(self)
        candidates = [dataset[i].image.float()[None] for i in range(min(REFERENCE_CANDIDATES, len(dataset)))]
        self._set_reference([(resize_like_preprocessor(c, size) if size else c)[0] for c in candidates])

    def _batch_normalization(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(1, C, 1, 1) mean and std of the ``Normalize`` in the pre-processor, if any (as ``like``'s dtype/device).

        anomalib's PreProcessor applies its whole transform (Patchcore: resize *and* ImageNet normalisation) to
        the batch before ``training_step`` / ``test_step``, but ORB, the agreement check and the reference fill
        work on pixels in [0, 1]: a normalised image clamped to [0, 1] loses most of its print.
        """
        step = normalize_step(self)
        if step is None:
            return None
        mean, std = (torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in (step.mean, step.std))
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    @staticmethod
    def _to_pixels(images: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Images as the PreProcessor left them -> pixels in [0, 1] (undo ``stats``' normalisation, if any)."""
        return images if stats is None else images * stats[1] + stats[0]

    def prepare_batch_images(self, images: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """Align images as the PreProcessor left them: back to [0, 1] for the aligner, normalised again after.

        The exported graph is unaffected: there the host step runs on [0, 1] images before the graph's
        normalisation (see ``predict_end_to_end``).
        """
        stats = self._batch_normalization(images)
        aligned, states = self.host_steps().prepare(self._to_pixels(images, stats))
        return (aligned if stats is None else (aligned - stats[0]) / stats[1]), states

    def training_step(self, batch: Batch, *args, **kwargs) -> Any:  # ruff: ignore[any-type] - the wrapped model's
        """Align the batch (reference: see :meth:`on_train_start`), then the wrapped model's training step."""
        if self.align_reference.numel() == 0:
            first = batch.image[:REFERENCE_CANDIDATES]
            self._set_reference(list(self._to_pixels(first, self._batch_normalization(first))))
        aligned, _ = self.prepare_batch_images(batch.image)
        return super().training_step(batch.update(image=aligned), *args, **kwargs)

    def on_train_epoch_end(self) -> None:
        """Say so once if most training images could not be aligned; then the wrapped model's hook (fit)."""
        aligner = self.aligner() if self.align_reference.numel() else None
        if aligner is not None and aligner.total and aligner.failures > aligner.total / 2:
            logger.warning(
                "%s: %d of %d training images could not be aligned to the reference and were used as they are; "
                "alignment does not suit this data (textures, freely rotating parts): use the plain model.",
                type(self).__name__,
                aligner.failures,
                aligner.total,
            )
        super().on_train_epoch_end()

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:
        """The reference buffer takes the checkpoint's shape (it is empty in a fresh model)."""
        key = prefix + "align_reference"
        if key in state_dict:
            self.align_reference = torch.empty_like(state_dict[key])
            self._host_steps = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AlignedPatchcore(AlignedMixin, Patchcore):
    """anomalib's Patchcore on images aligned to a reference training image (arguments: :class:`AlignedMixin`)."""


def aligned(model_class: type) -> type:
    """``Aligned<Model>``: the anomalib model class ``model_class`` behind the ``align`` host step.

    The returned class takes the model's arguments plus the alignment's (:class:`AlignedMixin`). It is built
    at run time, so nothing can import it by name: load its checkpoints with ``cls.load_from_checkpoint`` on
    the class object you made; for anomalib's CLI (class paths in YAML) use a module-level class such as
    :class:`AlignedPatchcore`.
    """
    name = f"Aligned{model_class.__name__}"
    return type(name, (AlignedMixin, model_class), {"__doc__": f"{name}: see aligned()."})
