"""PatchCore's locally aware patch embedding, shared by the memory-bank methods (AMFS, PNI, MFFA).

Backbone layers -> 3x3 average pooling (each patch sees its neighbourhood) -> every layer resized to
the first layer's grid (bilinear) -> concatenated along channels. ImageNet normalisation is a separate
step (:meth:`PatchEmbedding.normalize`) because AMFS normalises before cutting its pyramid blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from anomalib_ext.backbones import create_feature_extractor

if TYPE_CHECKING:
    from collections.abc import Sequence


class ImageNetNormalize(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> ImageNet-normalised; the constants are buffers, kept out of checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(images - mean) / std."""
        return (images - self.mean) / self.std


class PatchEmbedding(nn.Module):
    """Patch features ``(B, D, h, w)`` of images in [0, 1].

    Args:
        backbone: timm name (default offline ``tf_efficientnet_lite2``).
        layers: feature layers; the first sets the grid (h, w), D is the sum of their channels.
        pre_trained: ImageNet weights (never silently random: see :mod:`anomalib_ext.backbones`).
        backbone_weights: a weights file for the backbone.
        pool_size: local aggregation window (PatchCore: 3).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        layers: Sequence[str] = ("blocks.2", "blocks.4"),
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        pool_size: int = 3,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.feature_extractor = create_feature_extractor(
            backbone,
            self.layers,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
        ).eval()
        self.pooler = nn.AvgPool2d(pool_size, 1, pool_size // 2)
        self.imagenet = ImageNetNormalize()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of (B, 3, H, W) images in [0, 1]."""
        return self.imagenet(images)

    def features(self, normalized: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, D, h, w) locally aggregated, concatenated layer features."""
        with torch.no_grad():
            features = self.feature_extractor(normalized)
        maps = [self.pooler(features[layer]) for layer in self.layers]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return torch.cat(maps, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, D, h, w) patch features."""
        return self.features(self.normalize(images))
