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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.blur import SeparableGaussianBlur
from anomalib_ext.components.coreset import greedy_coreset_indices
from anomalib_ext.components.embedding import PatchEmbedding
from anomalib_ext.components.synthesis import foreign_content
from anomalib_ext.models.pni.distributions import (
    NeighbourhoodMLP,
    PNIScore,
    nearest_indices,
    neighbour_mask,
    position_histogram,
    train_neighbourhood_mlp,
)
from anomalib_ext.models.pni.refinement import RefinementNet, train_refinement

if TYPE_CHECKING:
    from collections.abc import Callable

    from anomalib_ext.models.pni.refinement import RefinementHistory

logger = logging.getLogger(__name__)

FOREIGN_SOURCES = 64  # foreign images kept to fill the refiner's synthetic defects with (a pool, drawn from per defect)


class PNIModel(DynamicBufferMixin, nn.Module):
    """Position and neighbourhood information over a distribution coreset (PNI, ICCV 2023).

    Args:
        backbone, layers, pre_trained, backbone_weights: the patch embedding (:class:`PatchEmbedding`).
        pool_size: local aggregation window of the embedding (PatchCore 3; the paper's "patch 5").
        embedding_ratio: |C_emb| as a fraction of all training patches (paper 1%).
        distribution_size: |C_dist| (paper 2048), taken from C_emb by the same greedy selection; at most |C_emb|.
        neighbourhood_size: p of the p x p neighbourhood (paper 9), also the position histogram's window.
        neighbourhood_centre_block: side of the block around the centre that the neighbourhood model does
            not see (1: the paper's, the centre only; 3: also the places whose 3 x 3 aggregation covers it).
        use_neighbourhood / use_position: the two distributions (the ablation); with neither, every C_dist
            element is allowed and the score is the distance to the nearest c*_emb.
        mlp_depth, mlp_width, temperature: the neighbourhood MLP (paper 10 x 2048, T = 2).
        mlp_projection: per-neighbour projection of the D features before the MLP's first layer (not in
            the paper; see :class:`NeighbourhoodMLP`); None: the paper's full first layer.
        tau: threshold on p(c | Omega) (None: the paper's 1 / (2 |C_dist|)).
        score_bank: what patches are scored against (:class:`PNIScore`): ``distribution`` (Eq. 7 as printed:
            the |C_dist| elements) or ``embedding`` (the authors' code: all of C_emb, each allowed through
            its nearest C_dist element).
        blur_sigma: Gaussian smoothing of the full-resolution map (paper 8).
        refine: the pixel-wise refinement network (paper Sec. 3.3); False leaves the map as the score gives it.
        refine_backbone, refine_backbone_weights: its encoder (offline lite2 in place of the paper's
            DenseNet-161) and, optionally, a weights file for it.
        refine_ratio: the share of the refined map in the final one (paper 0.1).
        refine_scale: the refinement network's resolution as a fraction of the image's (paper 1.0).
        image_score: the map whose maximum is the image score: ``final`` (after refinement; the paper's) or
            ``coarse`` (before it: the refinement then reshapes the map only).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        layers: tuple[str, ...] = ("blocks.2", "blocks.4"),
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        pool_size: int = 3,
        embedding_ratio: float = 0.01,
        distribution_size: int = 2048,
        neighbourhood_size: int = 9,
        neighbourhood_centre_block: int = 1,
        use_neighbourhood: bool = True,
        use_position: bool = True,
        mlp_depth: int = 10,
        mlp_width: int = 2048,
        mlp_projection: int | None = None,
        temperature: float = 2.0,
        tau: float | None = None,
        score_bank: str = "distribution",
        blur_sigma: float = 8.0,
        refine: bool = True,
        refine_backbone: str = "tf_efficientnet_lite2",
        refine_backbone_weights: str | None = None,
        refine_ratio: float = 0.1,
        refine_scale: float = 1.0,
        image_score: str = "final",
    ) -> None:
        super().__init__()
        self.embedding = PatchEmbedding(
            backbone, layers, pre_trained=pre_trained, backbone_weights=backbone_weights, pool_size=pool_size
        )
        self.embedding_ratio = embedding_ratio
        self.distribution_size = distribution_size
        neighbour_mask(neighbourhood_size, neighbourhood_centre_block)  # a bad size fails here, not at fit time
        self.neighbourhood_size = neighbourhood_size
        self.neighbourhood_centre_block = neighbourhood_centre_block
        self.use_neighbourhood = use_neighbourhood
        self.use_position = use_position
        self.mlp_depth, self.mlp_width, self.temperature = mlp_depth, mlp_width, temperature
        self.mlp_projection = mlp_projection
        self.mlp: NeighbourhoodMLP | None = None  # sized at fit time from D and |C_dist|
        self.score = PNIScore(tau, bank=score_bank)
        self.blur = SeparableGaussianBlur(blur_sigma)
        if image_score not in {"final", "coarse"}:
            msg = f"image_score must be 'final' or 'coarse', got {image_score!r}."
            raise ValueError(msg)
        self.image_score = image_score
        self.register_buffer("position", torch.empty(0))  # (|C_dist|, h, w) p(c | x)
        self.refiner = None
        if refine:
            self.refiner = RefinementNet(
                refine_backbone,
                pre_trained=pre_trained,
                backbone_weights=refine_backbone_weights,
                ratio=refine_ratio,
                scale=refine_scale,
            )

    def fit(self, features: torch.Tensor, *, epochs: int, batch_size: int = 2048, seed: int = 0) -> None:
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
        self.position = position_histogram(targets, k, self.neighbourhood_size) if self.use_position else torch.empty(0)
        self.mlp = None
        if not self.use_neighbourhood:
            return
        # Lightning calls a memory-bank model's fit() inside inference mode (on_validation_start): the MLP
        # must be built and trained outside it, on tensors that are not inference tensors.
        with torch.inference_mode(mode=False), torch.enable_grad():
            torch.manual_seed(seed)  # the MLP's initial weights
            self.mlp = NeighbourhoodMLP(
                d,
                k,
                self.mlp_depth,
                self.mlp_width,
                self.temperature,
                size=self.neighbourhood_size,
                centre_block=self.neighbourhood_centre_block,
                projection=self.mlp_projection,
            )
            self.mlp.to(features.device)
            losses = train_neighbourhood_mlp(
                self.mlp,
                features.clone(),
                targets.clone(),
                epochs=epochs,
                batch_size=batch_size,
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
            width = linear[0][1][0] if len(linear) > 1 else self.mlp_width
            project = state_dict.get(prefix + "mlp.project.weight")  # (projection, D, 1, 1) when there is one
            neighbours = int(neighbour_mask(self.neighbourhood_size, self.neighbourhood_centre_block).sum())
            channels = project.shape[1] if project is not None else linear[0][1][1] // neighbours
            self.mlp = NeighbourhoodMLP(
                channels,
                linear[-1][1][0],
                len(linear),
                width,
                self.temperature,
                size=self.neighbourhood_size,
                centre_block=self.neighbourhood_centre_block,
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
        epochs: int,
        batch_size: int = 8,
        learning_rate: float = 1e-4,
        validation: int = 0,
        patience: int = 2,
        normal_share: float = 0.0,
        defect_source: str | None = None,
        seed: int = 0,
        on_epoch_end: Callable[[RefinementHistory], None] | None = None,
    ) -> RefinementHistory | None:
        """Train the refinement network on synthetic defects of the (N, 3, H, W) uint8 training images.

        ``normal_share`` of them stay defect-free (see :func:`train_refinement`; 0 = the paper's). The
        defects are filled with other training images (``defect_source=None``) or with foreign content:
        ``noise`` or a folder of images (:func:`foreign_content`; the paper draws from all of MVTec AD).
        ``validation`` images are held out to stop the training when their loss stops falling. Returns
        the loss history (None without a refiner).
        """
        if self.refiner is None:
            return None
        with torch.inference_mode(mode=False), torch.enable_grad():  # see fit(): Lightning calls it in inference mode
            torch.manual_seed(seed)  # the new layers' weights: the same seed gives the same refiner
            self.refiner.reset_new_layers()
            sources = None
            if defect_source is not None:
                sources = foreign_content(defect_source, FOREIGN_SOURCES, tuple(images.shape[-2:]), seed=seed)
            return train_refinement(
                self.refiner,
                images.clone(),
                self.coarse_map,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                validation=validation,
                patience=patience,
                normal_share=normal_share,
                sources=sources,
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
