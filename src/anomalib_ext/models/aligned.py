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
from anomalib_ext.host_steps import HostPipeline
from anomalib_ext.models.base import HostStepsMixin
from anomalib_ext.transforms.align import AlignmentStep, ORBSettings, choose_reference, orb_settings, to_uint8_hwc

logger = logging.getLogger(__name__)

REFERENCE_CANDIDATES = 8  # first training images the reference is chosen from


class AlignedMixin(HostStepsMixin):
    """Mixed in before an anomalib model class: alignment to a reference training image around it.

    Call :meth:`_init_alignment` in ``__init__`` after the model's own ``__init__``.
    """

    align_reference: torch.Tensor

    def _init_alignment(
        self,
        orb: ORBSettings | dict[str, Any],
        reference: str,
        *,
        fill_from_reference: bool,
        match_fill_light: bool = False,
    ) -> None:
        self.orb = orb_settings(orb)
        self.reference_mode = reference
        self.fill_from_reference = fill_from_reference
        self.match_fill_light = match_fill_light
        self.register_buffer("align_reference", torch.empty(0, dtype=torch.uint8))  # (H, W, 3) once trained
        self._host_steps: HostPipeline | None = None

    def host_steps(self) -> HostPipeline:
        """The ``align`` step to the reference training image."""
        if self._host_steps is None:
            if self.align_reference.numel() == 0:
                msg = f"{type(self).__name__} has no alignment reference yet: train it (or load a checkpoint) first."
                raise RuntimeError(msg)
            step = AlignmentStep(
                self.align_reference.cpu().numpy(),
                self.orb,
                fill_from_reference=self.fill_from_reference,
                match_fill_light=self.match_fill_light,
            )
            self._host_steps = HostPipeline([step])
        return self._host_steps

    def _set_reference(self, candidates: list[torch.Tensor]) -> None:
        index = choose_reference(candidates, self.reference_mode, self.orb)
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
        aligner = self.host_steps().steps[0].aligner if self.align_reference.numel() else None
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
    """anomalib's Patchcore on images aligned to a reference training image (``align`` host step).

    Args:
        orb: alignment settings (:class:`ORBSettings`; default: guided ORB matching with the agreement check).
        reference: ``best`` (the image of the first batch the others align to best) or ``first``.
        fill_from_reference: show the reference where an aligned image has no pixels (outside its borders);
            the default, False, repeats the photograph's edge pixels there (measured better on SyntheticGPD:
            the seam between photo and reference fill made normal images peak at the border; see PNI's README).
        match_fill_light: light that fill as each photograph is lit (measured: no gain over the plain fill).
        **kwargs: anomalib's Patchcore arguments (backbone, layers, coreset_sampling_ratio, ...).
    """

    def __init__(
        self,
        *,
        orb: ORBSettings = ORBSettings(),  # ruff: ignore[function-call-in-default-argument] - frozen dataclass
        reference: str = "best",
        fill_from_reference: bool = False,
        match_fill_light: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._init_alignment(orb, reference, fill_from_reference=fill_from_reference, match_fill_light=match_fill_light)


def aligned(model_class: type) -> type:
    """``Aligned<Model>``: the anomalib model class ``model_class`` behind the ``align`` host step.

    The returned class takes the model's arguments plus ``orb``, ``reference``, ``fill_from_reference`` and
    ``match_fill_light``.
    It is built at run time, so nothing can import it by name: load its checkpoints with
    ``cls.load_from_checkpoint`` on the class object you made; for anomalib's CLI (class paths in YAML) use
    a module-level class such as :class:`AlignedPatchcore`.
    """

    def init(
        self: Any,  # ruff: ignore[any-type] - the class built below
        *,
        orb: ORBSettings = ORBSettings(),  # ruff: ignore[function-call-in-default-argument] - frozen dataclass
        reference: str = "best",
        fill_from_reference: bool = False,
        match_fill_light: bool = False,
        **kwargs,
    ) -> None:
        model_class.__init__(self, **kwargs)
        self._init_alignment(orb, reference, fill_from_reference=fill_from_reference, match_fill_light=match_fill_light)

    name = f"Aligned{model_class.__name__}"
    return type(name, (AlignedMixin, model_class), {"__init__": init, "__doc__": f"{name}: see aligned()."})
