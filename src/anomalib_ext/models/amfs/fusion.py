"""F_fusion: block anomaly maps -> block weights w_ij; image score s = sum_ij w_ij s_ij (AMFS Eq. 2).

A small AlexNet-like CNN reads each block map m_ij and outputs a logit; a learned per-block bias lets
positions and pyramid levels differ. As in the paper, w_ij = F_fusion(m_ij) depends on its own block
only: a sigmoid bounds it to (0, 1), so a block the CNN deems normal adds ~nothing to ``s`` however many
blocks there are (``fusion``). The ablation ``fusion_softmax`` normalises the weights over the blocks
instead (``s`` a weighted mean); measured worse (README, table 2), since one anomalous block among 21
must then win a competition rather than just switch on.
Trained after the banks are built, on block maps/scores of synthetic anomalies and augmented normals,
with a logistic loss that pushes ``s`` up for anomalies and down for normals.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from torch import nn

from anomalib_ext.components.inner_training import outside_inference_mode, train_part

if TYPE_CHECKING:
    from collections.abc import Iterator

SCORING_MODES = ("fusion", "fusion_softmax", "linear", "max", "mean")


class FusionNet(nn.Module):
    """AlexNet-like: 3 conv stages (ReLU, max-pool) and 2 fully connected layers, one logit per block map."""

    def __init__(self, num_blocks: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(1),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width, 2 * width),
            nn.ReLU(inplace=True),
            nn.Linear(2 * width, 1),
        )
        self.block_bias = nn.Parameter(torch.zeros(num_blocks))

    def forward(self, block_maps: torch.Tensor) -> torch.Tensor:
        """(B, nb, 1, h, w) normalised block maps -> (B, nb) logits."""
        b, nb = block_maps.shape[:2]
        logits = self.head(self.features(block_maps.flatten(0, 1))).reshape(b, nb)
        return logits + self.block_bias


class ScoreFusion(nn.Module):
    """Image score from block scores, by ``mode``.

    ``fusion`` (F_fusion, per-block sigmoid weights), ``fusion_softmax`` (the same CNN, weights normalised
    over blocks), ``linear`` (learned fixed weights), ``max`` or ``mean``.
    """

    def __init__(self, num_blocks: int, mode: str = "fusion") -> None:
        super().__init__()
        if mode not in SCORING_MODES:
            msg = f"scoring must be one of {SCORING_MODES}, got '{mode}'"
            raise ValueError(msg)
        self.mode = mode
        self.net = FusionNet(num_blocks) if mode in {"fusion", "fusion_softmax"} else None
        self.linear_logits = nn.Parameter(torch.zeros(num_blocks)) if mode == "linear" else None
        # Scale of normal scores (set when trained): maps enter the CNN as m / scale.
        self.register_buffer("score_scale", torch.ones(()))

    @property
    def trainable(self) -> bool:
        """Whether the mode has weights to learn (F_fusion, softmax, linear)."""
        return self.mode in {"fusion", "fusion_softmax", "linear"}

    def weights(self, block_maps: torch.Tensor) -> torch.Tensor:
        """(B, nb) block weights: each in (0, 1) for ``fusion``, summing to one for the others."""
        if self.mode == "fusion":
            return torch.sigmoid(self.net(block_maps / self.score_scale))
        if self.mode == "fusion_softmax":
            return torch.softmax(self.net(block_maps / self.score_scale), dim=1)
        if self.mode == "linear":
            return torch.softmax(self.linear_logits, dim=0).expand(block_maps.shape[0], -1)
        return torch.full(block_maps.shape[:2], 1.0 / block_maps.shape[1], device=block_maps.device)

    def forward(self, block_maps: torch.Tensor, block_scores: torch.Tensor) -> torch.Tensor:
        """(B, nb, 1, h, w), (B, nb) -> (B,) image scores."""
        if self.mode == "max":
            return block_scores.amax(dim=1)
        return (self.weights(block_maps) * block_scores).sum(dim=1)

    def fit(
        self,
        block_maps: torch.Tensor,
        block_scores: torch.Tensor,
        labels: torch.Tensor,
        *,
        epochs: int = 60,
        lr: float = 1e-3,
        batch_size: int = 32,
        seed: int = 0,
    ) -> list[float]:
        """Train on (N, nb, 1, h, w) maps, (N, nb) scores and (N,) 0/1 labels; returns the loss per epoch."""
        if not self.trainable:
            return []
        with outside_inference_mode():  # Lightning calls the memory-bank fit() inside inference mode
            return self._fit(block_maps.clone(), block_scores.clone(), labels.clone(), epochs, lr, batch_size, seed)

    def _fit(
        self,
        block_maps: torch.Tensor,
        block_scores: torch.Tensor,
        labels: torch.Tensor,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
    ) -> list[float]:
        torch.manual_seed(seed)  # the same data and seed give the same F_fusion
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if self.net is not None:
            nn.init.zeros_(self.net.block_bias)
        if self.linear_logits is not None:
            nn.init.zeros_(self.linear_logits)
        device = self.score_scale.device
        block_maps, block_scores, labels = block_maps.to(device), block_scores.to(device), labels.to(device)
        normal = block_scores[labels == 0]
        self.score_scale = normal.mean().clamp_min(1e-6).detach().to(self.score_scale)
        # An affine calibration of s/scale for the logistic loss (not part of inference: ranking only),
        # started where the logits are ~N(0, 1) over the training samples. s sums nb weighted block
        # scores, so before this start s/scale was ~nb/2 for every sample: the loss saturated and, at
        # 85 blocks (4 levels), drove every sigmoid weight to 0 where no gradient is left (image AUROC 0.40).
        with torch.no_grad():
            initial = torch.cat([
                self(m, sc) for m, sc in zip(block_maps.split(batch_size), block_scores.split(batch_size), strict=True)
            ])
            initial = initial / self.score_scale
        centre, spread = initial.mean(), initial.std().clamp_min(1e-6)
        slope = nn.Parameter(torch.tensor(math.log(math.e - 1)))  # softplus(slope) = 1 at the start
        offset = nn.Parameter(torch.tensor(0.0))
        params = [p for p in self.parameters() if p.requires_grad] + [slope, offset]
        optimizer = torch.optim.Adam(params, lr=lr)
        generator = torch.Generator().manual_seed(seed)

        def epoch_losses(_: int) -> Iterator[tuple[torch.Tensor, int]]:
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                score = self(block_maps[idx], block_scores[idx]) / self.score_scale
                logits = F.softplus(slope) * (score - centre) / spread + offset
                yield F.binary_cross_entropy_with_logits(logits, labels[idx].float()), len(idx)

        history = train_part(self, optimizer, epoch_losses, epochs=epochs, name=f"F_fusion ({self.mode})")
        return history.train_loss
