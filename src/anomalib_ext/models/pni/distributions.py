"""PNI's two models of which normal feature belongs at a place, and the score that combines them.

PNI (ICCV 2023) asks, for each patch feature phi(x): which elements c of a small *distribution coreset*
C_dist would be normal here, given the place x (position model) and the features around it
(neighbourhood model)? The patch is then scored against only those elements:

    p(c | Omega) = (p(c | x) + p(c | N_p(x))) / 2                                  (paper, Eq. 5)
    S(x) = -log max_c exp(-lambda |phi(x) - c*_emb|) T(p(c | Omega), tau)          (Eq. 11)
         = lambda * min over {c : p(c | Omega) > tau} of |phi(x) - c*_emb|

with c*_emb the nearest element of the large embedding coreset C_emb to c (Eq. 7; :class:`PNIScore` also
offers the authors' code's reading, every C_emb element scored through its C_dist element). Everything here is
vectorised over images and positions (the official code loops over positions and coreset elements in
Python and needs ~20 s per image): neighbourhoods come from one ``unfold``, the position histogram from
one ``bincount`` and one box filter, the score from one batched distance matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.inner_training import train_part
from anomalib_ext.components.memory_bank import squared_distances, torch_knn

if TYPE_CHECKING:
    from collections.abc import Iterator

NOT_ALLOWED = 1e12  # distance given to elements below tau: finite (exports cleanly), larger than any real one


def neighbour_mask(size: int, centre_block: int = 1) -> torch.Tensor:
    """(size^2,) bool in raster order: the places of a size x size window that count as neighbours.

    The centre_block x centre_block block around the centre is left out: 1 is the paper's (the centre
    only). With PatchCore's 3 x 3 aggregation each of the 8 nearest places averages over the centre place
    itself, so ``centre_block=3`` keeps the centre's own features out of what the model sees.
    """
    if size < 3 or size % 2 == 0:
        msg = f"The neighbourhood size must be odd and >= 3, got {size}."
        raise ValueError(msg)
    if centre_block < 1 or centre_block % 2 == 0 or centre_block >= size:
        msg = (
            f"The left-out centre block must be odd, >= 1 and smaller than the neighbourhood ({size}), "
            f"got {centre_block}."
        )
        raise ValueError(msg)
    offsets = torch.arange(size) - size // 2
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    return (torch.maximum(dy.abs(), dx.abs()) > centre_block // 2).flatten()


def neighbourhood_features(features: torch.Tensor, size: int, centre_block: int = 1) -> torch.Tensor:
    """(B, D, h, w) -> (B, n * D, h, w): the features of each place's n neighbours in its size x size window.

    The centre (or its centre_block x centre_block block, :func:`neighbour_mask`) is left out: the model
    must predict it from its surroundings. Places beyond the border are zeros (the paper's zero padding).
    """
    keep = neighbour_mask(size, centre_block)
    b, d, h, w = features.shape
    patches = F.unfold(features, size, padding=size // 2)  # (B, D * size^2, h*w), channel-major
    around = patches.reshape(b, d, size * size, h * w)[:, :, keep]
    return around.reshape(b, d * int(keep.sum()), h, w)


class NeighbourhoodMLP(nn.Module):
    """p(c | N_p(x)): an MLP from the concatenated neighbour features to logits over C_dist.

    The first layer reads the n neighbours' features concatenated (n = p^2 - 1 in the paper); that is a
    p x p convolution whose centre weight is zero, and every later layer is a 1 x 1 convolution. :meth:`probabilities`
    evaluates the whole map that way (a fast, traceable graph: no unfolded copy of every neighbourhood),
    :meth:`forward` takes the concatenated neighbourhoods of single places (training batches).

    Args:
        channels: D, the feature dimension (the first layer is sized from it; the official code hard-codes it).
        num_classes: |C_dist|.
        depth: linear layers in all (paper 10); BN + ReLU between them.
        width: hidden units (paper 2048).
        temperature: softmax temperature of :meth:`probabilities` (paper 2: less over-confident).
        size: p, the neighbourhood (paper 9).
        centre_block: side of the block around the centre that is left out (1: the paper's, the centre only;
            see :func:`neighbour_mask`).
        projection: if set, each neighbour's D features are first mapped to this many by one learnt linear
            map shared by all places (a low-rank first layer; not in the paper, which has none): the first
            layer's cost falls by D / projection. None: the paper's full first layer.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        depth: int = 10,
        width: int = 2048,
        temperature: float = 2.0,
        *,
        size: int = 9,
        centre_block: int = 1,
        projection: int | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            msg = f"The MLP needs at least one layer, got depth={depth}."
            raise ValueError(msg)
        keep = neighbour_mask(size, centre_block)
        self.size, self.centre_block = size, centre_block
        # For each place of the p x p kernel: which neighbour's first-layer weights it holds, or n (a zero
        # column) for the left-out block. A constant gather: exact, and the exported graph folds it.
        source = torch.full((size * size,), int(keep.sum()), dtype=torch.long)
        source[keep] = torch.arange(int(keep.sum()))
        self.register_buffer("kernel_source", source, persistent=False)
        self.project = nn.Conv2d(channels, projection, 1) if projection else None
        layers: list[nn.Module] = []
        features = (projection or channels) * int(keep.sum())
        for _ in range(depth - 1):
            layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.net = nn.Sequential(*layers)
        self.temperature = temperature

    def projected(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, h, w): the per-place features the neighbourhoods are made of."""
        return features if self.project is None else self.project(features)

    def forward(self, neighbours: torch.Tensor) -> torch.Tensor:
        """(N, C x n) concatenated neighbourhoods (channel-major, n neighbours) -> (N, |C_dist|) logits."""
        return self.net(neighbours)

    def _first_layer_kernel(self) -> torch.Tensor:
        """The first linear layer as a p x p convolution kernel, zero over the left-out centre block."""
        first = self.net[0]
        weight = first.weight.reshape(first.out_features, -1, int(self.kernel_source.max()))
        padded = F.pad(weight, (0, 1))  # the zero column the left-out places take
        return padded[..., self.kernel_source].reshape(*weight.shape[:2], self.size, self.size)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) features -> (B, |C_dist|, h, w) logits of every place's neighbourhood (zero padded)."""
        x = F.conv2d(self.projected(features), self._first_layer_kernel(), self.net[0].bias, padding=self.size // 2)
        b, _, h, w = x.shape
        x = x.flatten(2)  # (B, C, h*w): BatchNorm1d and 1 x 1 linear layers act on channels
        for layer in self.net[1:]:  # a linear layer acts at every place: a 1 x 1 convolution
            x = F.conv1d(x, layer.weight[..., None], layer.bias) if isinstance(layer, nn.Linear) else layer(x)
        return x.reshape(b, -1, h, w)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) features -> (B, |C_dist|, h, w) softmax(logits / T) over C_dist."""
        return torch.softmax(self.logits(features) / self.temperature, dim=1)


def gather_neighbourhoods(
    features: torch.Tensor,
    images: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    size: int,
    centre_block: int = 1,
) -> torch.Tensor:
    """The concatenated neighbourhoods of chosen places, as :func:`neighbourhood_features` lays them out.

    Args:
        features: (B, C, h, w) feature maps.
        images: (N,) each place's image (index into ``features``).
        rows: (N,) its row.
        cols: (N,) its column.
        size: p.
        centre_block: the left-out block around the centre (:func:`neighbour_mask`).

    Returns:
        (N, C x n): channel-major, the n neighbours in raster order, zeros off the map.
    """
    half = size // 2
    padded = F.pad(features, (half, half, half, half))
    offsets = torch.arange(size, device=features.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    keep = neighbour_mask(size, centre_block).to(features.device)
    dy, dx = dy.flatten()[keep], dx.flatten()[keep]  # (n,) raster order, the centre block left out
    gathered = padded[images[:, None], :, rows[:, None] + dy, cols[:, None] + dx]  # (N, n, C)
    return gathered.transpose(1, 2).reshape(len(images), -1)


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


SCORE_BANKS = ("distribution", "embedding")


class PNIScore(DynamicBufferMixin, nn.Module):
    """S(x) from patch features and p(c | Omega): the distance to the nearest allowed c*_emb.

    Args:
        tau: an element c is allowed where p(c | Omega) > tau (paper: 1 / (2 |C_dist|), the default when
            None). The most probable element is always allowed: with tau >= 1 / |C_dist| a place may have
            no element above it, and it is then scored against its most probable normal feature.
        scale: lambda of Eq. 11 (paper 1): the score is lambda times a distance.
        bank: what a patch is compared with. ``distribution``: Eq. 7 as printed, c*_emb = the nearest C_emb
            element of each c in C_dist, which is c itself since C_dist is drawn from C_emb: |C_dist|
            targets. ``embedding``: the authors' code, every C_emb element, allowed where the C_dist element
            nearest to it is: |C_emb| targets (1% of the patches, PatchCore's bank, against 2048).
    """

    def __init__(self, tau: float | None = None, scale: float = 1.0, bank: str = "distribution") -> None:
        super().__init__()
        if bank not in SCORE_BANKS:
            msg = f"The PNI score bank must be one of {SCORE_BANKS}, got {bank!r}."
            raise ValueError(msg)
        self.tau = tau
        self.scale = scale
        self.bank = bank
        self.register_buffer("targets", torch.empty(0))  # (M, D): what patches are compared with
        self.register_buffer("clusters", torch.empty(0, dtype=torch.long))  # (M,): each target's C_dist element

    def fit(self, distribution_coreset: torch.Tensor, embedding_coreset: torch.Tensor) -> None:
        """The targets and their C_dist elements (see ``bank``)."""
        if self.bank == "embedding":
            self.targets = embedding_coreset.clone()
            self.clusters = torch_knn(embedding_coreset, distribution_coreset, 1)[1][:, 0].clone()
        else:  # Eq. 7: for each C_dist element, its nearest C_emb element
            nearest = torch_knn(distribution_coreset, embedding_coreset, 1)[1][:, 0]
            self.targets = embedding_coreset[nearest].clone()
            self.clusters = torch.arange(len(distribution_coreset), device=distribution_coreset.device)

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:
        """Checkpoints from before ``bank`` have no ``clusters``: theirs is the ``distribution`` bank."""
        targets, clusters = prefix + "targets", prefix + "clusters"
        if targets in state_dict and clusters not in state_dict:
            state_dict[clusters] = torch.arange(len(state_dict[targets]), device=state_dict[targets].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_clusters(self) -> int:
        """|C_dist|: the number of elements p(c | Omega) is a distribution over."""
        return int(self.clusters.max()) + 1 if self.clusters.numel() else 0

    @property
    def threshold(self) -> float:
        """The tau in use (the paper's 1 / (2 |C_dist|) unless set)."""
        return self.tau if self.tau is not None else 1.0 / (2 * self.num_clusters)

    def allowed(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(N, |C_dist|) p(c | Omega) per place -> which elements a place is scored against (the fallback included)."""
        return (probabilities > self.threshold) | (probabilities == probabilities.amax(1, keepdim=True))

    def forward(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) features, (B, |C_dist|, h, w) p(c | Omega) -> (B, 1, h, w) scores."""
        b, d, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(1, -1, d)
        distances = squared_distances(queries, self.targets[None])[0].sqrt()  # (B*h*w, M)
        allowed = self.allowed(probabilities.permute(0, 2, 3, 1).reshape(b * h * w, -1))  # (B*h*w, |C_dist|)
        if self.bank == "embedding":
            allowed = allowed.index_select(1, self.clusters)  # each C_emb element as its C_dist element
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
    epochs: int,
    batch_size: int = 2048,
    learning_rate: float = 1e-3,
    step_epochs: int = 5,
    images_per_chunk: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train p(c | N_p(x)) with cross-entropy: every training place's neighbours -> its nearest C_dist index.

    The (neighbourhood, index) pairs are gathered on the fly, one batch of places at a time: all of them at
    once would be N x h x w x (p^2 - 1) x D floats (GBs; the official code materialises them in float64).
    Places are shuffled within each chunk of ``images_per_chunk`` images, chunks in a new order every
    epoch. Adam, StepLR(``step_epochs``, 0.1) as in the paper. Returns the mean loss of every epoch.

    Args:
        mlp: the model to train (left in eval mode); its ``size`` is the neighbourhood p.
        features: (N, D, h, w) training features.
        targets: (N, h, w) nearest C_dist index of each place (:func:`nearest_indices`).
        epochs: passes over every training place (paper 15).
        batch_size: places per optimiser step (paper 2048).
        learning_rate: Adam's (paper 1e-3).
        step_epochs: the learning rate drops tenfold every this many epochs (paper 5).
        images_per_chunk: images whose places are shuffled together.
        seed: seeds the order of images and places.
        progress: show a progress bar over epochs.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(mlp.parameters(), lr=learning_rate)
    _, _, h, w = features.shape

    def epoch_losses(_: int) -> Iterator[tuple[torch.Tensor, int]]:
        order = torch.randperm(len(features), generator=generator)
        for chunk in order.split(images_per_chunk):
            chunk_features, chunk_targets = features[chunk.to(features.device)], targets[chunk.to(targets.device)]
            places = torch.randperm(len(chunk) * h * w, generator=generator).to(features.device)
            for batch in places.split(batch_size):
                if len(batch) < 2:  # BatchNorm needs two samples
                    continue
                images, rows, cols = batch // (h * w), (batch // w) % h, batch % w
                # The projection (if any) is learnt: project inside the step so that its gradient flows.
                inputs = gather_neighbourhoods(
                    mlp.projected(chunk_features), images, rows, cols, mlp.size, mlp.centre_block
                )
                yield F.cross_entropy(mlp(inputs), chunk_targets[images, rows, cols]), len(batch)

    history = train_part(
        mlp,
        optimiser,
        epoch_losses,
        epochs=epochs,
        name="PNI neighbourhood MLP",
        scheduler=torch.optim.lr_scheduler.StepLR(optimiser, step_epochs, gamma=0.1),
        progress=progress,
    )
    return history.train_loss
