"""PNI's two models of which normal feature belongs at a place, and the score that combines them.

PNI (ICCV 2023) asks, for each patch feature phi(x): which elements c of a small *distribution coreset*
C_dist would be normal here, given the place x (position model) and the features around it
(neighbourhood model)? The patch is then scored against only those elements:

    p(c | Omega) = (p(c | x) + p(c | N_p(x))) / 2                                  (paper, Eq. 5)
    S(x) = -log max_c exp(-lambda |phi(x) - c*_emb|) T(p(c | Omega), tau)          (Eq. 11)
         = lambda * min over {c : p(c | Omega) > tau} of |phi(x) - c*_emb|

with c*_emb the nearest element of the large embedding coreset C_emb to c (Eq. 7). Everything here is
vectorised over images and positions (the official code loops over positions and coreset elements in
Python and needs ~20 s per image): neighbourhoods come from one ``unfold``, the position histogram from
one ``bincount`` and one box filter, the score from one batched distance matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.memory_bank import squared_distances

NOT_ALLOWED = 1e12  # distance given to elements below tau: finite (exports cleanly), larger than any real one


def neighbourhood_features(features: torch.Tensor, size: int) -> torch.Tensor:
    """(B, D, h, w) -> (B, (size^2 - 1) * D, h, w): the features of each place's size x size neighbours.

    The centre itself is left out (the model must predict it from its surroundings); places beyond the
    border are zeros, as in the paper's zero padding.
    """
    if size < 3 or size % 2 == 0:
        msg = f"The neighbourhood size must be odd and >= 3, got {size}."
        raise ValueError(msg)
    b, d, h, w = features.shape
    patches = F.unfold(features, size, padding=size // 2)  # (B, D * size^2, h*w), channel-major
    patches = patches.reshape(b, d, size * size, h * w)
    centre = (size * size) // 2
    around = torch.cat([patches[:, :, :centre], patches[:, :, centre + 1 :]], dim=2)
    return around.reshape(b, d * (size * size - 1), h, w)


class NeighbourhoodMLP(nn.Module):
    """p(c | N_p(x)): an MLP from the concatenated neighbour features to logits over C_dist.

    Args:
        in_features: (p^2 - 1) x D, sized from the feature dimension (the official code hard-codes it).
        num_classes: |C_dist|.
        depth: linear layers in all (paper 10); BN + ReLU between them.
        width: hidden units (paper 2048).
        temperature: softmax temperature of :meth:`probabilities` (paper 2: less over-confident).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 10,
        width: int = 2048,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            msg = f"The MLP needs at least one layer, got depth={depth}."
            raise ValueError(msg)
        layers: list[nn.Module] = []
        size = in_features
        for _ in range(depth - 1):
            layers += [nn.Linear(size, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            size = width
        layers.append(nn.Linear(size, num_classes))
        self.net = nn.Sequential(*layers)
        self.temperature = temperature

    def forward(self, neighbours: torch.Tensor) -> torch.Tensor:
        """(N, in_features) -> (N, |C_dist|) logits (train with cross-entropy on these)."""
        return self.net(neighbours)

    def probabilities(self, neighbours: torch.Tensor) -> torch.Tensor:
        """(B, in_features, h, w) neighbourhoods -> (B, |C_dist|, h, w) softmax(logits / T)."""
        b, c, h, w = neighbours.shape
        logits = self.net(neighbours.permute(0, 2, 3, 1).reshape(-1, c))
        probabilities = torch.softmax(logits / self.temperature, dim=1)
        return probabilities.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def position_histogram(indices: torch.Tensor, num_classes: int, size: int) -> torch.Tensor:
    """p(c | x): (N, h, w) nearest-C_dist indices of the training images -> (|C_dist|, h, w) distributions.

    Each place counts the indices of every training image within its size x size window (the paper's
    "features in p x p neighbourhood are counted for robust estimation"); each place's counts sum to 1.
    """
    n, h, w = indices.shape
    places = torch.arange(h * w, device=indices.device).repeat(n)
    counts = torch.bincount(places * num_classes + indices.reshape(-1), minlength=h * w * num_classes)
    counts = counts.reshape(h, w, num_classes).permute(2, 0, 1).float()[None]  # (1, K, h, w)
    window = F.avg_pool2d(counts, size, stride=1, padding=size // 2, divisor_override=1)[0]  # sums, zero border
    return window / window.sum(0, keepdim=True).clamp_min(1)


class PNIScore(DynamicBufferMixin, nn.Module):
    """S(x) from patch features and p(c | Omega): the distance to the nearest allowed c*_emb.

    Args:
        tau: an element c is allowed where p(c | Omega) > tau (paper: 1 / (2 |C_dist|), the default when
            None). The most probable element is always allowed: with tau >= 1 / |C_dist| a place may have
            no element above it, and it is then scored against its most probable normal feature.
        scale: lambda of Eq. 11 (paper 1): the score is lambda times a distance.
    """

    def __init__(self, tau: float | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.scale = scale
        self.register_buffer("targets", torch.empty(0))  # (|C_dist|, D): c*_emb of every C_dist element

    def fit(self, distribution_coreset: torch.Tensor, embedding_coreset: torch.Tensor) -> None:
        """c*_emb (Eq. 7): for each C_dist element, its nearest C_emb element."""
        nearest = squared_distances(distribution_coreset[None], embedding_coreset[None])[0].argmin(1)
        self.targets = embedding_coreset[nearest].clone()

    @property
    def threshold(self) -> float:
        """The tau in use (the paper's 1 / (2 |C_dist|) unless set)."""
        return self.tau if self.tau is not None else 1.0 / (2 * len(self.targets))

    def forward(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) features, (B, |C_dist|, h, w) p(c | Omega) -> (B, 1, h, w) scores."""
        b, d, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(1, -1, d)
        distances = squared_distances(queries, self.targets[None])[0].sqrt()  # (B*h*w, K)
        p = probabilities.permute(0, 2, 3, 1).reshape(-1, distances.shape[1])
        allowed = (p > self.threshold) | (p == p.amax(1, keepdim=True))
        nearest = torch.where(allowed, distances, distances.new_tensor(NOT_ALLOWED)).amin(1)
        return (self.scale * nearest).reshape(b, 1, h, w)
