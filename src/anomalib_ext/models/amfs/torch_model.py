"""AMFS network: pyramid blocks -> backbone -> per-block k-NN against per-block coresets -> maps and scores.

Eval-mode ``forward`` takes *aligned* images in [0, 1] (alignment is the ``align`` host step of
:mod:`anomalib_ext.transforms.align`) and is traceable with a dynamic batch: reshapes, batched
matmuls, top-k — no faiss, no OpenCV, no Python branching on values or batch size.
"""

from __future__ import annotations

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.blur import SeparableGaussianBlur
from anomalib_ext.components.embedding import PatchEmbedding
from anomalib_ext.components.memory_bank import MemoryBank
from anomalib_ext.models.amfs.fusion import ScoreFusion
from anomalib_ext.transforms.pyramid import PyramidBlocks


class AMFSModel(DynamicBufferMixin, nn.Module):
    """Aligned multi-scale block memory banks with fused scoring.

    Args:
        backbone: timm name (default offline ``tf_efficientnet_lite2``).
        layers: feature layers, concatenated after 3x3 local averaging as in PatchCore.
        pre_trained / backbone_weights: see :func:`anomalib_ext.backbones.create_feature_extractor`.
        levels: pyramid levels N ((4^N - 1) / 3 blocks).
        num_neighbors: k of PatchCore's score re-weighting.
        scoring: ``fusion`` (F_fusion), ``linear``, ``max`` or ``mean``.
        blur_sigma: Gaussian smoothing of the final map (PatchCore uses 4).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        layers: tuple[str, ...] = ("blocks.2", "blocks.4"),
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        levels: int = 3,
        num_neighbors: int = 9,
        scoring: str = "fusion",
        blur_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.embedding = PatchEmbedding(backbone, layers, pre_trained=pre_trained, backbone_weights=backbone_weights)
        self.pyramid = PyramidBlocks(levels)
        self.num_neighbors = num_neighbors
        self.fusion = ScoreFusion(self.pyramid.num_blocks, scoring)
        # Same kernel as anomalib's GaussianBlur2d (PatchCore's sigma = 4), applied as two 1-D passes.
        self.blur = SeparableGaussianBlur(blur_sigma)
        self.memory = MemoryBank()  # one bank per block position: (num_blocks, M, D)
        self.register_buffer("reference", torch.empty(0, dtype=torch.uint8))  # (H, W, 3) aligned-frame reference

    @property
    def num_blocks(self) -> int:
        """Blocks of the pyramid, (4^N - 1) / 3."""
        return self.pyramid.num_blocks

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> (B, nb, P, D) patch features of every block, and the patch grid (h, w)."""
        blocks = self.pyramid.split(self.embedding.normalize(images))  # (B, nb, 3, bh, bw)
        embedding = self.embedding.features(blocks.flatten(0, 1))  # (B*nb, D, h, w)
        d, h, w = embedding.shape[1:]
        embedding = embedding.reshape(-1, self.num_blocks, d, h * w).transpose(2, 3)
        return embedding, (h, w)

    def build_banks(self, embeddings: torch.Tensor, sampling_ratio: float, seed: int = 0) -> None:
        """(N, nb, P, D) training embeddings -> one greedy coreset per block position (same size for all)."""
        n, nb, p, d = embeddings.shape
        self.memory.fit(embeddings.permute(1, 0, 2, 3).reshape(nb, n * p, d), sampling_ratio, seed=seed)

    def block_scores(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, nb, P, D) -> patch scores (B, nb, P) and re-weighted block scores (B, nb)."""
        b, nb, p, d = embedding.shape
        queries = embedding.transpose(0, 1).reshape(nb, b * p, d)
        nearest, nearest_idx = self.memory.nearest(queries)  # (nb, B*P)
        patch = nearest.reshape(nb, b, p)
        scores = self.memory.reweighted_max(
            queries.reshape(nb, b, p, d),
            patch,
            nearest_idx.reshape(nb, b, p),
            num_neighbors=self.num_neighbors,
        )
        return patch.transpose(0, 1), scores.transpose(0, 1)

    def maps_and_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block maps (B, nb, 1, h, w), block scores (B, nb), final map (B, 1, H, W)."""
        embedding, (h, w) = self.embed(images)
        patch, scores = self.block_scores(embedding)
        block_maps = patch.reshape(patch.shape[0], self.num_blocks, 1, h, w)
        levels = self.pyramid.splice(block_maps, output_size=tuple(images.shape[-2:]))  # (B, N, 1, H, W)
        final = self.blur(levels.amax(dim=1))  # Eq. 1: pixel-wise max over levels
        return block_maps, scores, final

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Aligned (B, 3, H, W) images in [0, 1] -> ``InferenceBatch(pred_score, anomaly_map)``."""
        block_maps, scores, anomaly_map = self.maps_and_scores(images)
        return InferenceBatch(pred_score=self.fusion(block_maps, scores), anomaly_map=anomaly_map)
