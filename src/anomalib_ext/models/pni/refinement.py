"""PNI's pixel-wise refinement (paper Sec. 3.3): an encoder-decoder that redraws the anomaly map along the image.

The patch-level map, resized and blurred, misses edges and thin shapes. The refinement network sees the
RGB image and the map (4 channels, fused right after the first convolution: early fusion), and is trained
on synthetic defects made from the training images,

    I = (1 - A) * I_clean + A * I_defect                                          (paper, Eq. 13)

with A a combination of hand-drawn-like stroke patterns and I_defect another (augmented, shifted) training
image, to output A from (I, PNI's map of I), with an L2 + image-gradient loss (Eq. 14-15). At inference
the final map is 90% the original and 10% the refined one (rescaled to the map's units), so a refinement
that has learnt little cannot do much harm.

The encoder is an offline ImageNet EfficientNet-Lite (lite2 by default; the paper uses DenseNet-161,
which does not install offline); the decoder is a small U-Net path over its five feature strides.
Everything is one traceable graph with a dynamic batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from torch import nn

from anomalib_ext.backbones import create_backbone
from anomalib_ext.components.embedding import ImageNetNormalize
from anomalib_ext.components.inner_training import TrainingHistory, frozen_batchnorm, train_part
from anomalib_ext.components.synthesis import synthesise_defects

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

MAP_INPUT_CLAMP = 4.0  # the map enters the network as map / scale, bounded: a far-out score is just "very high"


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class RefinementNet(nn.Module):
    """f(I, A_hat) -> refined map; :meth:`forward` returns the blended map in the input map's units.

    Args:
        backbone: an EfficientNet-family timm model (``conv_stem``, ``bn1``, ``blocks``); offline lite2 default.
        pre_trained, backbone_weights: the encoder's ImageNet weights (see :func:`create_backbone`).
        decoder_channels: widths of the decoder stages, deepest first: one per skip connection (strides 16 to 2).
        ratio: share of the refined map in the output (paper 0.1).
        scale: the network works at this fraction of the input resolution and its output is resized back
            (bilinear): 1.0 is the paper's; 0.5 costs a quarter (at 256 px its pixels are still 2 px, against
            the patch map's 8 px).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        decoder_channels: tuple[int, ...] = (96, 64, 32, 24),
        ratio: float = 0.1,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            msg = f"The refinement ratio must lie in [0, 1], got {ratio}."
            raise ValueError(msg)
        if not 0.0 < scale <= 1.0:
            msg = f"The refinement scale must lie in (0, 1], got {scale}."
            raise ValueError(msg)
        self.resolution = scale
        self.encoder = create_backbone(
            backbone, pre_trained=pre_trained, backbone_weights=backbone_weights, features_only=True
        )
        if not all(hasattr(self.encoder, name) for name in ("conv_stem", "bn1", "blocks")):
            msg = f"The refinement encoder must be an EfficientNet-family timm model; {backbone} is not."
            raise ValueError(msg)
        # Which blocks' outputs are the skip connections (timm's feature_info: strides 2, 4, 8, 16, 32).
        self.taps = [int(name.split(".")[1]) for name in self.encoder.feature_info.module_name()]
        skips = list(self.encoder.feature_info.channels())
        if len(decoder_channels) != len(skips) - 1:
            msg = f"decoder_channels needs {len(skips) - 1} widths (one per skip), got {len(decoder_channels)}."
            raise ValueError(msg)
        stem = self.encoder.conv_stem
        # Early fusion: the map gets its own first convolution, added to the image's before the stem's BN.
        padding = stem.kernel_size[0] // 2
        self.map_stem = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, padding=padding)
        stages, previous = [], skips[-1]
        for skip, width in zip(skips[-2::-1], decoder_channels, strict=True):
            stages.append(_conv_bn_relu(previous + skip, width))
            previous = width
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(previous + 1, 1, 3, padding=1)  # full resolution, with the map itself beside it
        self.ratio = ratio
        self.register_buffer("scale", torch.tensor(0.0))  # typical map level of a synthetic defect; set by training
        self.imagenet = ImageNetNormalize()

    def reset_new_layers(self) -> None:
        """Draw the layers that do not come from ImageNet (map stem, decoder, head) afresh from torch's RNG."""
        for module in [self.map_stem, *self.decoder.modules(), self.head]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def refine(self, images: torch.Tensor, anomaly_map: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1], (B, 1, H, W) maps -> (B, 1, H, W) refined map in [0, 1]."""
        full_size = anomaly_map.shape[-2:]
        if self.resolution < 1.0:
            # Bilinear at half size is a 2 x 2 mean (no aliasing), and it exports where antialias=True does not.
            images = F.interpolate(images, scale_factor=self.resolution, mode="bilinear", align_corners=False)
            anomaly_map = F.interpolate(anomaly_map, scale_factor=self.resolution, mode="bilinear", align_corners=False)
        level = (anomaly_map / self.scale.clamp_min(1e-12)).clamp(0.0, MAP_INPUT_CLAMP)
        x = self.encoder.conv_stem(self.imagenet(images))
        x = self.encoder.bn1(x + self.map_stem(level)[..., : x.shape[-2], : x.shape[-1]])
        features = []
        for index, block in enumerate(self.encoder.blocks):
            x = block(x)
            if index in self.taps:
                features.append(x)
        x = features[-1]
        for stage, skip in zip(self.decoder, features[-2::-1], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], 1))
        x = F.interpolate(x, size=anomaly_map.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(torch.cat([x, level], 1))
        if self.resolution < 1.0:
            logits = F.interpolate(logits, size=full_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)

    def forward(self, images: torch.Tensor, anomaly_map: torch.Tensor) -> torch.Tensor:
        """The final map: (1 - ratio) x the map + ratio x the refined map, brought back to the map's units."""
        refined = self.refine(images, anomaly_map) * self.scale
        return (1.0 - self.ratio) * anomaly_map + self.ratio * refined


def refinement_loss(refined: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L2 + gradient loss (paper Eq. 14-15), as mean squared errors: the gradient term weights the edges."""
    regression = F.mse_loss(refined, target)
    gradient_h = F.mse_loss(refined.diff(dim=-2), target.diff(dim=-2))
    gradient_w = F.mse_loss(refined.diff(dim=-1), target.diff(dim=-1))
    return regression + gradient_h + gradient_w


def train_refinement(
    refiner: RefinementNet,
    images: torch.Tensor,
    coarse_map: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int = 3,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    calibration_images: int = 32,
    normal_share: float = 0.0,
    sources: torch.Tensor | None = None,
    validation: int = 0,
    patience: int = 2,
    on_epoch_end: Callable[[TrainingHistory], None] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainingHistory:
    """Train the refinement network on synthetic defects of the training images; returns the loss history.

    First the map scale: the median, over ``calibration_images`` synthetic images, of their map's maximum
    (the refiner sees map / scale, and its [0, 1] output is multiplied back by it). Then ``epochs`` passes
    (paper 3) over the training images in batches (paper 8), each image a fresh synthetic defect every
    epoch (online augmentation), Adam (paper 1e-4). The encoder's batch-norm statistics stay the ImageNet
    ones: batches of 8 are too small to re-estimate them.

    With ``validation`` > 0 (not in the paper) that many training images are held out: they are never
    trained on, and one fixed synthetic defect each (pasted from another held-out image) is the validation
    set. ``epochs`` is then the most there are: training stops once the validation loss has not improved
    for ``patience`` epochs, and the weights of the best epoch are kept. This asks the refiner to learn its
    task, not to run a fixed count of steps; the paper's 3 epochs are ~80 steps on a 200-image set.

    Args:
        refiner: the network (left in eval mode).
        images: (N, 3, H, W) uint8 normal training images, N >= 2 (N >= validation + 2).
        coarse_map: images in [0, 1] -> (B, 1, H, W) PNI map before refinement (called without gradients).
        epochs: passes over the training images (paper 3); the maximum with ``validation``.
        batch_size: synthetic images per optimiser step (paper 8).
        learning_rate: Adam's (paper 1e-4).
        calibration_images: synthetic images that set the map scale (all with a defect).
        normal_share: share of the training images left defect-free (target 0 everywhere): the refiner
            also learns not to fire where the map is high on normal texture. 0 = the paper's.
        sources: (M, 3, H, W) uint8 images to fill the defects with (:func:`foreign_content`); None: other
            training images of the set.
        validation: training images held out for early stopping (0 = the paper's fixed epochs; else >= 2).
        patience: epochs without a better validation loss before training stops.
        on_epoch_end: called with the history after every epoch, the refiner in eval mode (diagnostics).
        seed: seeds the synthetic defects, augmentations, order and the held-out choice.
        progress: show a progress bar over the optimiser steps.
    """
    _check_training_arguments(len(images), normal_share, validation, patience)
    device = refiner.scale.device
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    held_out = None
    if validation:
        order = torch.randperm(len(images), generator=generator)
        held_out, images = images[order[:validation]], images[order[validation:]]

    calibration = torch.arange(min(calibration_images, len(images)))
    with torch.no_grad():
        maxima = [
            coarse_map(synthesise_defects(images, chunk, rng, sources=sources)[0].to(device)).flatten(1).amax(1)
            for chunk in calibration.split(batch_size)
        ]
    refiner.scale.fill_(float(torch.cat(maxima).median().clamp_min(1e-6)))
    validation_set = None
    if held_out is not None:
        validation_set = _validation_set(held_out, coarse_map, seed, batch_size, sources, device)

    optimiser = torch.optim.Adam([p for p in refiner.parameters() if p.requires_grad], lr=learning_rate)

    def epoch_losses(_: int) -> Iterator[tuple[torch.Tensor, int]]:
        for chunk in torch.randperm(len(images), generator=generator).split(batch_size):
            synthetic, label = synthesise_defects(images, chunk, rng, normal_share=normal_share, sources=sources)
            synthetic, label = synthetic.to(device), label.to(device)
            with torch.no_grad():
                coarse = coarse_map(synthetic)
            yield refinement_loss(refiner.refine(synthetic, coarse), label), len(chunk)

    history = train_part(
        refiner,
        optimiser,
        epoch_losses,
        epochs=epochs,
        name="PNI refinement",
        frozen=frozen_batchnorm(refiner.encoder),  # keep the ImageNet BN statistics (see above)
        validate=None if validation_set is None else lambda: _validation_loss(refiner, validation_set),
        patience=patience,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
    logger.info("PNI refinement: map scale %.4g", float(refiner.scale))
    return history


def _check_training_arguments(count: int, normal_share: float, validation: int, patience: int) -> None:
    if not 0.0 <= normal_share < 1.0:
        msg = f"normal_share must be in [0, 1), got {normal_share}."
        raise ValueError(msg)
    if count < 2:
        msg = f"The refinement needs at least 2 training images (one is pasted into the other), got {count}."
        raise ValueError(msg)
    if validation and not 2 <= validation <= count - 2:
        msg = (
            f"The refinement's validation holds out 2 to N - 2 of the N = {count} training images "
            f"(a synthetic defect pastes one image into another, in each part), got {validation}."
        )
        raise ValueError(msg)
    if patience < 1:
        msg = f"patience must be at least 1 epoch, got {patience}."
        raise ValueError(msg)


def _validation_set(
    held_out: torch.Tensor,
    coarse_map: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    batch_size: int,
    sources: torch.Tensor | None,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fixed (synthetic image, coarse map, label) batches of the held-out images, from their own RNG stream."""
    rng = np.random.default_rng([seed, 1])
    batches = []
    with torch.no_grad():
        for chunk in torch.arange(len(held_out)).split(batch_size):
            synthetic, label = synthesise_defects(held_out, chunk, rng, sources=sources)
            synthetic, label = synthetic.to(device), label.to(device)
            batches.append((synthetic, coarse_map(synthetic), label))
    return batches


def _validation_loss(refiner: RefinementNet, batches: list[tuple[torch.Tensor, ...]]) -> float:
    """Mean refinement loss over the validation batches (the refiner in eval mode: :func:`train_part` sees to it)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for synthetic, coarse, label in batches:
            loss = refinement_loss(refiner.refine(synthetic, coarse), label)
            total, count = total + float(loss) * len(label), count + len(label)
    return total / count
