"""PNI network: patch features -> p(c | position) and p(c | neighbourhood) over C_dist -> thresholded distances.

Fit (:meth:`PNIModel.fit`) takes the training features: the embedding coreset C_emb (greedy, 1%), the
distribution coreset C_dist (greedy, from C_emb), each C_dist element's nearest C_emb element, the
position histogram, and the neighbourhood MLP trained on the fly. Eval ``forward`` is one traceable graph
with a dynamic batch (unfold, matmuls, softmax, a masked min, and the refinement network when it is on):
no faiss, no loops over places or coreset elements. The refinement network
(:class:`~anomalib_ext.models.pni.refinement.RefinementNet`) is trained last, on synthetic defects of the
training images (:meth:`PNIModel.fit_refinement`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.blur import SeparableGaussianBlur
from anomalib_ext.components.coreset import greedy_coreset_indices
from anomalib_ext.components.embedding import PatchEmbedding
from anomalib_ext.components.inner_training import outside_inference_mode
from anomalib_ext.models.pni.distributions import (
    NeighbourhoodMLP,
    PNIScore,
    nearest_indices,
    neighbour_mask,
    position_histogram,
    train_neighbourhood_mlp,
)
from anomalib_ext.models.pni.refinement import RefinementNet, train_refinement
from anomalib_ext.models.pni.settings import NeighborhoodMLPSettings, RefinerSettings, ScoreBank
from anomalib_ext.settings import as_settings, check_choice

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anomalib_ext.components.inner_training import TrainingHistory

logger = logging.getLogger(__name__)


class PNIModel(DynamicBufferMixin, nn.Module):
    """Position and neighbourhood information over a distribution coreset (PNI, ICCV 2023).

    Takes :class:`~anomalib_ext.models.pni.PNI`'s arguments (the same names, defaults and settings groups;
    the Lightning model hands them on with :func:`~anomalib_ext.settings.arguments_for`): see its docstring.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        layers: Sequence[str] = ("blocks.2", "blocks.4"),
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        pool_size: int = 3,
        embedding_ratio: float = 0.01,
        distribution_size: int = 2048,
        neighborhood_size: int = 9,
        tau: float | None = None,
        blur_sigma: float = 8.0,
        use_neighborhood: bool = True,
        use_position: bool = True,
        refine: bool = True,
        score_bank: ScoreBank = "embedding",
        mlp: NeighborhoodMLPSettings | Mapping[str, Any] = NeighborhoodMLPSettings(),
        refiner: RefinerSettings | Mapping[str, Any] = RefinerSettings(),
    ) -> None:
        super().__init__()
        self.embedding = PatchEmbedding(
            backbone, tuple(layers), pre_trained=pre_trained, backbone_weights=backbone_weights, pool_size=pool_size
        )
        self.embedding_ratio = embedding_ratio
        self.distribution_size = distribution_size
        self.mlp_settings = as_settings(NeighborhoodMLPSettings, mlp)
        self.refiner_settings = as_settings(RefinerSettings, refiner)
        neighbour_mask(neighborhood_size, self.mlp_settings.centre_block)  # a bad size fails here, not at fit time
        self.neighborhood_size = neighborhood_size
        self.use_neighborhood = use_neighborhood
        self.use_position = use_position
        self.mlp: NeighbourhoodMLP | None = None  # sized at fit time from D and |C_dist|
        self.score = PNIScore(tau, bank=check_choice("score_bank", score_bank, ScoreBank))
        self.blur = SeparableGaussianBlur(blur_sigma)
        # The map whose maximum is the image score: "final" (refined, the paper's). An experiment may set
        # "coarse" (before refinement): measured no better as a default (README), so it is not an argument.
        self.image_score = "final"
        self.register_buffer("position", torch.empty(0))  # (|C_dist|, h, w) p(c | x)
        self.refiner = None
        if refine:
            settings = self.refiner_settings
            self.refiner = RefinementNet(
                settings.backbone,
                pre_trained=pre_trained,
                backbone_weights=settings.backbone_weights,
                ratio=settings.ratio,
                scale=settings.scale,
            )

    def fit(self, features: torch.Tensor, *, seed: int = 0) -> None:
        """Coresets, c*_emb, the position histogram and the neighbourhood MLP from (N, D, h, w) features."""
        n, d, h, w = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(-1, d)
        size = max(1, int(len(patches) * self.embedding_ratio))
        embedding_coreset = patches[greedy_coreset_indices(patches, coreset_size=size, seed=seed)]
        k = min(self.distribution_size, size)
        distribution_coreset = embedding_coreset[greedy_coreset_indices(embedding_coreset, coreset_size=k, seed=seed)]
        self.score.fit(distribution_coreset, embedding_coreset)
        targets = nearest_indices(features, distribution_coreset)
        logger.info("PNI: C_emb %d, C_dist %d features, %d images of %d x %d places", size, k, n, h, w)
        self.position = position_histogram(targets, k, self.neighborhood_size) if self.use_position else torch.empty(0)
        self.mlp = None
        if not self.use_neighborhood:
            return
        settings = self.mlp_settings
        # Lightning calls a memory-bank model's fit() inside inference mode (on_validation_start): the MLP
        # must be built and trained outside it, on tensors that are not inference tensors.
        with outside_inference_mode():
            torch.manual_seed(seed)  # the MLP's initial weights
            self.mlp = NeighbourhoodMLP(
                d,
                k,
                settings.depth,
                settings.width,
                settings.temperature,
                size=self.neighborhood_size,
                centre_block=settings.centre_block,
                projection=settings.projection,
            )
            self.mlp.to(features.device)
            losses = train_neighbourhood_mlp(
                self.mlp,
                features.clone(),
                targets.clone(),
                epochs=settings.epochs,
                batch_size=settings.batch_size,
                seed=seed,
            )
        logger.info("PNI neighbourhood MLP: cross-entropy %s per epoch", [round(x, 3) for x in losses])

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:
        """A fitted checkpoint has the MLP (sized at fit time): build it from its weights' shapes first."""
        linear = sorted(
            (int(key[len(prefix + "mlp.net.") :].split(".")[0]), tensor.shape)
            for key, tensor in state_dict.items()
            if key.startswith(prefix + "mlp.net.") and key.endswith(".weight") and tensor.ndim == 2
        )
        if linear:
            width = linear[0][1][0] if len(linear) > 1 else self.mlp_settings.width
            project = state_dict.get(prefix + "mlp.project.weight")  # (projection, D, 1, 1) when there is one
            neighbours = int(neighbour_mask(self.neighborhood_size, self.mlp_settings.centre_block).sum())
            channels = project.shape[1] if project is not None else linear[0][1][1] // neighbours
            self.mlp = NeighbourhoodMLP(
                channels,
                linear[-1][1][0],
                len(linear),
                width,
                self.mlp_settings.temperature,
                size=self.neighborhood_size,
                centre_block=self.mlp_settings.centre_block,
                projection=None if project is None else project.shape[0],
            )
            # A module built here starts in training mode; it must follow the model's (its BatchNorm layers
            # would otherwise normalise with the batch's statistics when an eval-mode model loads weights).
            self.mlp.train(self.training)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def distributions(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, |C_dist|, h, w) p(c | Omega): the mean of the distributions in use (uniform if none)."""
        b, _, h, w = features.shape
        k = self.score.num_clusters
        parts = []
        if self.mlp is not None:
            parts.append(self.mlp.probabilities(features))
        if self.position.numel():
            parts.append(self.position[None].expand(b, k, h, w))
        if not parts:
            return features.new_full((b, k, h, w), 1.0 / k)
        return sum(parts) / len(parts)

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, 1, h, w) patch scores."""
        features = self.embedding(images)
        return self.score(features, self.distributions(features))

    def upsample(self, patch_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, h, w) patch scores -> (B, 1, H, W) map at ``size``: bilinear, then the Gaussian blur."""
        return self.blur(F.interpolate(patch_scores, size=size, mode="bilinear", align_corners=False))

    def coarse_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, 1, H, W) map before refinement: patch scores, bilinear, blur."""
        return self.upsample(self.patch_scores(images), images.shape[-2:])

    def fit_refinement(
        self,
        images: torch.Tensor,
        *,
        seed: int = 0,
        on_epoch_end: Callable[[TrainingHistory], None] | None = None,
    ) -> TrainingHistory | None:
        """Train the refinement network on synthetic defects of the (N, 3, H, W) uint8 training images.

        As :attr:`refiner_settings` say (epochs, batch, learning rate, held-out validation); the defects are
        filled with other training images, as in the paper. Returns the loss history (None without a refiner).
        """
        if self.refiner is None:
            return None
        settings = self.refiner_settings
        with outside_inference_mode():  # see fit(): Lightning calls it in inference mode
            torch.manual_seed(seed)  # the new layers' weights: the same seed gives the same refiner
            self.refiner.reset_new_layers()
            return train_refinement(
                self.refiner,
                images.clone(),
                self.coarse_map,
                epochs=settings.epochs,
                batch_size=settings.batch_size,
                learning_rate=settings.learning_rate,
                validation=settings.validation,
                patience=settings.patience,
                on_epoch_end=on_epoch_end,
                seed=seed,
            )

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """(B, 3, H, W) images in [0, 1] -> ``InferenceBatch(pred_score, anomaly_map)``; image score = map max."""
        if self.score.targets.numel() == 0:
            msg = "PNI is not fitted: train it before scoring."
            raise RuntimeError(msg)
        coarse = self.coarse_map(images)
        anomaly_map = coarse if self.refiner is None else self.refiner(images, coarse)
        scored = coarse if self.image_score == "coarse" else anomaly_map
        return InferenceBatch(pred_score=scored.flatten(1).amax(1), anomaly_map=anomaly_map)
