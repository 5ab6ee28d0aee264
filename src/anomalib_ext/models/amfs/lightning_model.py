"""AMFS — Aligned Matching and Fused Scoring (PRCV 2024) as an anomalib model.

``anomalib train --model AMFS --data SyntheticGPD`` — every training and test image is aligned to a
reference training image (I-RA) and each patch is compared with what the training images show at the
same aligned place (``matching="positional"``, default), or scored against per-block coresets of a
pyramid with F_fusion (``matching="blocks"``, the paper's A-MES: ``configs/models/amfs_paper.yaml``).
Where alignment cannot help (most training images do not register, or too few images for positional
banks) it falls back to PatchCore behaviour — a global bank, no alignment — and says so in the log and
the checkpoint. Maps are returned in the input image's frame.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from anomalib_ext.models.alignment import AlignmentMixin
from anomalib_ext.models.amfs.settings import FusionSettings, Matching, PositionalSettings, Scoring
from anomalib_ext.models.amfs.synthetic import fusion_training_set
from anomalib_ext.models.amfs.torch_model import AMFSModel
from anomalib_ext.models.one_pass import OnePassFitMixin
from anomalib_ext.settings import arguments_for, as_settings
from anomalib_ext.transforms.align import to_uint8_hwc

logger = logging.getLogger(__name__)


class AMFS(AlignmentMixin, OnePassFitMixin, MemoryBankMixin, AnomalibModule):
    """AMFS anomaly detector.

    Args:
        backbone: timm backbone (default: offline ImageNet ``tf_efficientnet_lite2``; paper: WideResNet-50).
        layers: backbone layers whose features are concatenated.
        pre_trained: ImageNet weights (never silently random: see ``anomalib_ext.backbones``).
        backbone_weights: a weights file for the backbone.
        levels: pyramid levels N (paper default 3 -> 21 blocks).
        matching: ``positional`` (default: each patch against the training patches near its aligned position,
            full feature resolution; :class:`PositionalSettings`), ``blocks`` (the paper's per-block banks +
            ``scoring``) or ``both`` (the worse of the two).
        coreset_sampling_ratio: coreset fraction per block bank (paper 1%), and of the global fallback bank.
        num_neighbors: k for PatchCore's score re-weighting (9).
        scoring: ``fusion`` (F_fusion, paper: w_ij = F(m_ij), sigmoid-bounded), ``fusion_softmax`` (weights
            normalised over blocks), ``linear`` (learned fixed weights), ``max`` or ``mean``.
        align: I-RA on/off (the ``align`` host step; its arguments ``orb``, ``reference`` and
            ``fill_from_reference`` are :class:`~anomalib_ext.models.alignment.AlignmentMixin`'s; AMFS fills
            from the reference by default).
        max_align_failures: if more than this fraction of training images fail to align, fall back to a
            global bank (PatchCore behaviour) without alignment. Positional matching assumes that (nearly)
            every image registers: printed garments fail on 0-6 of 189 images (SyntheticGPD, six designs);
            at 0.5, tire (46% failures) kept positional banks and lost to Patchcore (README).
        positional: the positional matching (:class:`PositionalSettings`).
        fusion: F_fusion's training set and training (:class:`FusionSettings`).
        seed: seeds hold-out split, synthesis and coreset starts.
        **kwargs: the alignment's arguments (``orb``, ``reference``, ``fill_from_reference``).
    """

    default_image_size = (512, 512)  # the paper's input size (the pre-processor's default)
    default_fill_from_reference = True  # the graph fills unseen pixels itself and leaves them out of the score
    legacy_arguments: ClassVar[dict[str, Any]] = {  # anomalib-ext 0.1 checkpoints (models/legacy.py)
        "radius": ("positional", "radius"),
        "position_baseline": ("positional", "baseline"),
        "position_scale": ("positional", "scale"),
        "unseen_margin": ("positional", "unseen_margin"),
        "positional_max_images": ("positional", "max_images"),
        "min_positional_images": ("positional", "min_images"),
        "holdout_to_banks": ("fusion", "holdout_to_banks"),
        "texture_dir": ("fusion", "texture_dir"),
        **{
            f"fusion_{field}": ("fusion", field)
            for field in ("holdout", "max_images", "samples_per_image", "epochs", "anomalies")
        },
    }

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        layers: Sequence[str] = ("blocks.2", "blocks.4"),
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        levels: int = 3,
        matching: Matching = "positional",
        coreset_sampling_ratio: float = 0.01,
        num_neighbors: int = 9,
        scoring: Scoring = "fusion",
        align: bool = True,
        max_align_failures: float = 0.2,
        positional: PositionalSettings = PositionalSettings(),
        fusion: FusionSettings = FusionSettings(),
        seed: int = 0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        **kwargs,
    ) -> None:
        network_arguments = arguments_for(AMFSModel, locals())
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
            **kwargs,
        )
        self.model = AMFSModel(**network_arguments)
        self.positional_settings = as_settings(PositionalSettings, positional)
        self.fusion_settings = as_settings(FusionSettings, fusion)
        self.max_align_failures = max_align_failures
        self.fallback_reason = ""  # why the global bank replaced the positional/block banks ("" = it did not)
        self.coreset_sampling_ratio = coreset_sampling_ratio
        self.align = align
        self.seed = seed
        self._train_images: list[tuple[str | None, torch.Tensor]] = []  # (path, uint8 image) as collected

    # ---- training ----------------------------------------------------------------------------
    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:
        """Keep the (resized) normal images with their paths; everything is built in :meth:`fit` once all are seen."""
        del args, kwargs
        normal = (
            torch.ones(len(batch.image), dtype=torch.bool) if batch.gt_label is None else (batch.gt_label == 0).cpu()
        )
        paths = list(batch.image_path) if batch.image_path is not None else [None] * len(batch.image)
        images = (batch.image.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        self._train_images.extend(
            (path, image) for path, image, keep in zip(paths, images, normal.tolist(), strict=True) if keep
        )
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def _images_in_path_order(self) -> list[torch.Tensor]:
        """The training images sorted by file path; images without a path keep their order.

        The reference, hold-out split and banks then do not depend on the order a (shuffling) dataloader
        delivered them in.
        """
        order = sorted(
            range(len(self._train_images)),
            key=lambda i: (self._train_images[i][0] is None, self._train_images[i][0] or "", i),
        )
        return [self._train_images[i][1] for i in order]

    def fit(self) -> None:
        """Reference -> alignment -> per-block coresets -> F_fusion (seeded, global RNG state restored)."""
        with isolate_rng():
            random.seed(self.seed)
            np.random.seed(self.seed)  # ruff: ignore[numpy-legacy-random] - anomalib's synthesis draws from the global RNGs
            torch.manual_seed(self.seed)
            self._fit()

    def _fit(self) -> None:
        images = self._images_in_path_order()
        if len(images) < 3:
            msg = f"AMFS needs at least 3 normal training images (reference, banks, fusion), got {len(images)}."
            raise ValueError(msg)
        self.model.global_memory.bank = torch.empty(0, device=self.device)  # a refit decides afresh
        self.fallback_reason = ""
        ref_index = self.choose_reference(images) if self.align else 0
        self.model.reference = torch.from_numpy(to_uint8_hwc(images[ref_index])).to(self.device)
        self._host_steps = None
        rest = [img for i, img in enumerate(images) if i != ref_index]
        aligned_rest = self._aligned_float(rest)
        reason = self._fallback_reason(len(images))
        if reason:
            self._fit_global(images, reason)
        else:
            if self.model.uses_blocks:
                self._fit_blocks(rest, aligned_rest)
            if self.model.uses_positional:
                self._fit_positional(images[ref_index], aligned_rest)
        self._train_images = []

    def _fallback_reason(self, num_images: int) -> str:
        """Why positional/block banks cannot work here ("" if they can), from the alignment of the training images."""
        aligner = self.aligner()
        if aligner is not None and aligner.failures > self.max_align_failures * aligner.total:
            return (
                f"{aligner.failures} of {aligner.total} training images could not be aligned to the reference "
                f"(more than max_align_failures={self.max_align_failures})"
            )
        if self.model.matching != "blocks" and num_images < self.positional_settings.min_images:
            return f"only {num_images} training images (positional min_images={self.positional_settings.min_images})"
        return ""

    def _fit_global(self, images: list[torch.Tensor], reason: str) -> None:
        """PatchCore behaviour: one coreset over every patch of the unaligned images; no alignment at inference."""
        self.fallback_reason = reason
        logger.warning(
            "AMFS falls back to a global memory bank without alignment (PatchCore behaviour): %s. Positional "
            "matching needs images that register to one reference (prints, fixed parts); this is recorded in "
            "the checkpoint and the export has no alignment step.",
            reason,
        )
        features = self._embed_full_all(torch.stack(images).to(self.device).float().div(255))
        self.model.fit_global(features, self.coreset_sampling_ratio, seed=self.seed)
        logger.info("AMFS global bank: %d features (from %d images)", len(self.model.global_memory), len(images))

    def _fit_positional(self, reference: torch.Tensor, aligned_rest: torch.Tensor) -> None:
        """Every aligned training image's feature grid (the reference included), at most positional_max_images."""
        aligned = torch.cat([reference.to(aligned_rest.device).float().div(255)[None], aligned_rest])
        max_images = self.positional_settings.max_images
        if len(aligned) > max_images:
            keep = np.sort(np.random.default_rng(self.seed).permutation(len(aligned))[:max_images])
            aligned = aligned[torch.from_numpy(keep).to(aligned.device)]
        features = self._embed_full_all(aligned)
        self.model.fit_positional(features)
        logger.info(
            "AMFS positional bank: %d images x %d x %d positions, radius %d",
            len(aligned),
            *features.shape[-2:],
            self.model.positional.radius,
        )

    def _fit_blocks(self, rest: list[torch.Tensor], aligned_rest: torch.Tensor) -> None:
        """The paper's A-MES: per-block coresets; F_fusion on held-out images when ``matching="blocks"``."""
        trains_fusion = self.model.matching == "blocks" and self.model.fusion.trainable
        settings = self.fusion_settings
        rng = np.random.default_rng(self.seed)
        n_holdout = round(len(rest) * settings.holdout) if trains_fusion else 0
        n_holdout = min(max(n_holdout, 1 if trains_fusion else 0), len(rest) - 1, settings.max_images)
        order = torch.from_numpy(rng.permutation(len(rest))).to(aligned_rest.device)
        aligned_holdout, aligned_bank = aligned_rest[order[:n_holdout]], aligned_rest[order[n_holdout:]]
        embeddings = self._embed_all(aligned_bank)
        self.model.build_banks(embeddings, self.coreset_sampling_ratio, seed=self.seed)
        banked = len(aligned_bank)
        if n_holdout:
            aligner = self.aligner()
            maps, scores, labels = fusion_training_set(
                self.model,
                aligned_holdout,
                samples_per_image=settings.samples_per_image,
                texture_dir=settings.texture_dir,
                seed=self.seed,
                fill=aligner.fill if aligner is not None else None,
                kinds=settings.anomalies,
            )
            self.model.fusion.fit(maps, scores, labels, epochs=settings.epochs, seed=self.seed)
            if settings.holdout_to_banks:
                embeddings = torch.cat([embeddings, self._embed_all(aligned_holdout)])
                self.model.build_banks(embeddings, self.coreset_sampling_ratio, seed=self.seed)
                banked = len(rest)
        logger.info(
            "AMFS banks: %d blocks x %d features (from %d images)",
            *self.model.memory.bank.shape[:2],
            banked,
        )

    def _embed_all(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model.embed(chunk)[0] for chunk in images.split(8)])

    def _embed_full_all(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model.embed_full(chunk) for chunk in images.split(8)])

    def _aligned_float(self, images: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(images).to(self.device).float().div(255)  # (N, 3, H, W) in [0, 1]
        return self.model.fill_unseen(self.host_steps().prepare(batch)[0])[0]

    # ---- alignment (AlignmentMixin: the align host step, validation/test/predict and export routes) ----
    def alignment_reference(self) -> torch.Tensor:
        """The reference image, a buffer of the network (its graph fills unseen pixels from it)."""
        return self.model.reference

    def aligns(self) -> bool:
        """I-RA when ``align``, unless the model fell back to the global bank."""
        return self.align and not self.model.uses_global_bank

    def marks_unseen(self) -> bool:
        """The graph fills the reference in itself and leaves the unseen cells out of the image score."""
        return self.fill_from_reference and self.model.unseen_margin is not None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the global-bank fallback and its reason (the banks themselves are in the state dict)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["amfs_fallback"] = self.fallback_reason

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the fallback reason (the host steps are rebuilt from the loaded reference on first use)."""
        super().on_load_checkpoint(checkpoint)
        self.fallback_reason = checkpoint.get("amfs_fallback", "")
