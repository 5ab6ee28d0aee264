"""AMFS network: pyramid blocks -> backbone -> per-block k-NN against per-block coresets -> maps and scores.

Eval-mode ``forward`` takes *aligned* images in [0, 1] (alignment is a host step, see
``alignment.py``) and is traceable with a dynamic batch: reshapes, batched matmuls, top-k — no faiss,
no OpenCV, no Python branching on values or batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.backbones import create_feature_extractor
from anomalib_ext.components.blur import SeparableGaussianBlur
from anomalib_ext.components.coreset import greedy_coreset_indices
from anomalib_ext.models.amfs.fusion import ScoreFusion
from anomalib_ext.transforms.pyramid import PyramidBlocks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _squared_distances(queries: torch.Tensor, banks: torch.Tensor) -> torch.Tensor:
    """(nb, Q, D) x (nb, M, D) -> (nb, Q, M) squared L2, by the matmul expansion."""
    return (queries.pow(2).sum(-1, keepdim=True) - 2 * queries @ banks.transpose(1, 2) + banks.pow(2).sum(-1).unsqueeze(1)).clamp_min(0)


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
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        levels: int = 3,
        num_neighbors: int = 9,
        scoring: str = "fusion",
        blur_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.feature_extractor = create_feature_extractor(backbone, list(layers), pre_trained, backbone_weights).eval()
        self.layers = list(layers)
        self.pooler = nn.AvgPool2d(3, 1, 1)
        self.pyramid = PyramidBlocks(levels)
        self.num_neighbors = num_neighbors
        self.fusion = ScoreFusion(self.pyramid.num_blocks, scoring)
        # Same kernel as anomalib's GaussianBlur2d (PatchCore's sigma = 4), applied as two 1-D passes.
        self.blur = SeparableGaussianBlur(blur_sigma)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("banks", torch.empty(0))  # (num_blocks, M, D)
        self.register_buffer("reference", torch.empty(0, dtype=torch.uint8))  # (H, W, 3) aligned-frame reference

    @property
    def num_blocks(self) -> int:
        return self.pyramid.num_blocks

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> (B, nb, P, D) patch features of every block, and the patch grid (h, w)."""
        x = (images - self.mean) / self.std
        blocks = self.pyramid.split(x)  # (B, nb, 3, bh, bw)
        flat = blocks.flatten(0, 1)
        with torch.no_grad():
            features = self.feature_extractor(flat)
        maps = [self.pooler(features[layer]) for layer in self.layers]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        embedding = torch.cat(maps, dim=1)  # (B*nb, D, h, w)
        d, h, w = embedding.shape[1:]
        embedding = embedding.reshape(-1, self.num_blocks, d, h * w).transpose(2, 3)
        return embedding, (h, w)

    def build_banks(self, embeddings: torch.Tensor, sampling_ratio: float, seed: int = 0) -> None:
        """(N, nb, P, D) training embeddings -> one greedy coreset per block position (same size for all)."""
        n, nb, p, d = embeddings.shape
        per_block = embeddings.permute(1, 0, 2, 3).reshape(nb, n * p, d)
        size = max(1, int(n * p * sampling_ratio))
        banks = [per_block[j][greedy_coreset_indices(per_block[j], coreset_size=size, seed=seed + j, progress=False)] for j in range(nb)]
        self.banks = torch.stack(banks).contiguous()

    def block_scores(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, nb, P, D) -> patch scores (B, nb, P) and re-weighted block scores (B, nb)."""
        b, nb, p, d = embedding.shape
        queries = embedding.transpose(0, 1).reshape(nb, b * p, d)
        nearest_sq, nearest_idx = _squared_distances(queries, self.banks).min(dim=2)  # (nb, B*P)
        patch = nearest_sq.sqrt().reshape(nb, b, p)
        # PatchCore's re-weighting of the most anomalous patch of each block by its neighbourhood density.
        worst, worst_pos = patch.max(dim=2)  # (nb, B)
        worst_query = queries.reshape(nb, b, p, d).gather(2, worst_pos[..., None, None].expand(nb, b, 1, d)).squeeze(2)
        worst_nn = nearest_idx.reshape(nb, b, p).gather(2, worst_pos[..., None]).squeeze(2)  # (nb, B)
        nn_feature = self.banks.gather(1, worst_nn[..., None].expand(nb, b, d))  # (nb, B, D)
        k = min(self.num_neighbors, self.banks.shape[1])
        support = _squared_distances(nn_feature, self.banks).topk(k, dim=2, largest=False).indices  # (nb, B, k)
        support_features = self.banks.gather(1, support.reshape(nb, b * k, 1).expand(nb, b * k, d)).reshape(nb, b, k, d)
        distances = (worst_query[:, :, None] - support_features).pow(2).sum(-1).sqrt()  # (nb, B, k)
        weight = 1 - torch.softmax(distances, dim=2)[..., 0]
        return patch.transpose(0, 1), (weight * worst).transpose(0, 1)

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
