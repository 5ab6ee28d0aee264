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

from anomalib_ext.components.memory_bank import squared_distances, torch_knn

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
        nearest = torch_knn(distribution_coreset, embedding_coreset, 1)[1][:, 0]
        self.targets = embedding_coreset[nearest].clone()

    @property
    def threshold(self) -> float:
        """The tau in use (the paper's 1 / (2 |C_dist|) unless set)."""
        return self.tau if self.tau is not None else 1.0 / (2 * self.targets.shape[0])

    def forward(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) features, (B, |C_dist|, h, w) p(c | Omega) -> (B, 1, h, w) scores."""
        b, d, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(1, -1, d)
        distances = squared_distances(queries, self.targets[None])[0].sqrt()  # (B*h*w, K)
        p = probabilities.permute(0, 2, 3, 1).reshape(-1, distances.shape[1])
        allowed = (p > self.threshold) | (p == p.amax(1, keepdim=True))
        nearest = torch.where(allowed, distances, distances.new_tensor(NOT_ALLOWED)).amin(1)
        return (self.scale * nearest).reshape(b, 1, h, w)


def nearest_indices(features: torch.Tensor, coreset: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """(N, D, h, w) features -> (N, h, w) index of each patch's nearest ``coreset`` element (M, D)."""
    d = features.shape[1]
    return torch.cat([
        torch_knn(part.permute(0, 2, 3, 1).reshape(-1, d), coreset, 1)[1].reshape(len(part), *part.shape[2:])
        for part in features.split(chunk)
    ])


def train_neighbourhood_mlp(
    mlp: NeighbourhoodMLP,
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    size: int,
    epochs: int,
    batch_size: int = 2048,
    learning_rate: float = 1e-3,
    step_epochs: int = 5,
    images_per_chunk: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train p(c | N_p(x)) with cross-entropy: every training place's neighbours -> its nearest C_dist index.

    The (neighbourhood, index) pairs are built on the fly, a few images at a time: all of them at once
    would be N x h x w x (p^2 - 1) x D floats (GBs; the official code materialises them in float64).
    Places are shuffled within each chunk of ``images_per_chunk`` images, chunks in a new order every
    epoch. Adam, StepLR(``step_epochs``, 0.1) as in the paper. Returns the mean loss of every epoch.

    Args:
        mlp: the model to train (left in eval mode).
        features: (N, D, h, w) training features.
        targets: (N, h, w) nearest C_dist index of each place (:func:`nearest_indices`).
        size: neighbourhood size p.
        epochs: passes over every training place (paper 15).
        batch_size: places per optimiser step (paper 2048).
        learning_rate: Adam's (paper 1e-3).
        step_epochs: the learning rate drops tenfold every this many epochs (paper 5).
        images_per_chunk: images whose pairs are built and shuffled together.
        seed: seeds the order of images and places.
        progress: show a progress bar over epochs.
    """
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(mlp.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_epochs, gamma=0.1)
    losses = []
    mlp.train()
    for _ in tqdm(range(epochs), desc="PNI neighbourhood MLP", disable=not progress, leave=False):
        total, count = 0.0, 0
        order = torch.randperm(len(features), generator=generator)
        for chunk in order.split(images_per_chunk):
            neighbours = neighbourhood_features(features[chunk.to(features.device)], size)
            inputs = neighbours.permute(0, 2, 3, 1).reshape(-1, neighbours.shape[1])
            labels = targets[chunk.to(targets.device)].reshape(-1)
            shuffle = torch.randperm(len(inputs), generator=generator).to(inputs.device)
            for batch in shuffle.split(batch_size):
                if len(batch) < 2:  # BatchNorm needs two samples
                    continue
                loss = F.cross_entropy(mlp(inputs[batch]), labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total, count = total + loss.item() * len(batch), count + len(batch)
        schedule.step()
        losses.append(total / max(count, 1))
    mlp.eval()
    return losses
