"""AMFS network: aligned images -> patch features -> positional and/or block memory banks -> maps and scores.

Matching (``matching``):

- ``blocks``: the paper's A-MES: pyramid blocks -> backbone -> per-block k-NN against per-block coresets,
  block scores fused by F_fusion (``scoring``);
- ``positional``: full-resolution features; each patch compared with the training patches within
  ``radius`` cells of the same aligned position (:class:`PositionalBank`); image score = worst patch;
- ``both``: the pixel-wise max of the two maps, and the larger of the two image scores' worst patches;
- a *global* bank (PatchCore: full-resolution features, one coreset, re-weighted worst patch) is what
  :meth:`AMFSModel.fit_global` installs when alignment cannot help (the Lightning module decides).

Which banks are filled decides the path, so a checkpoint carries its mode. Eval-mode ``forward`` takes
*aligned* images in [0, 1] (alignment is the ``align`` host step of :mod:`anomalib_ext.transforms.align`)
and is traceable with a dynamic batch: reshapes, batched matmuls, top-k — no faiss, no OpenCV, no
Python branching on values or batch size (only on which banks exist, fixed after training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_ext.components.blur import SeparableGaussianBlur
from anomalib_ext.components.embedding import PatchEmbedding
from anomalib_ext.components.memory_bank import MemoryBank
from anomalib_ext.components.positional_bank import PositionalBank
from anomalib_ext.components.pyramid_blocks import PyramidBlocks
from anomalib_ext.models.amfs.fusion import ScoreFusion
from anomalib_ext.models.amfs.settings import Matching, PositionalSettings, Scoring
from anomalib_ext.settings import as_settings, check_choice

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

FULLY_SEEN = 0.999  # a cell counts as seen when the photograph covers (nearly) all of its pixels
UNSEEN_PENALTY = 1e9  # score given to left-out cells: below any real (z-scored) patch score


class AMFSModel(DynamicBufferMixin, nn.Module):
    """Aligned multi-scale block memory banks with fused scoring.

    Takes :class:`~anomalib_ext.models.amfs.AMFS`'s network arguments (the same names, defaults and
    settings groups; see its docstring), plus ``blur_sigma``: the Gaussian smoothing of the final map
    (PatchCore's 4).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        layers: Sequence[str] = ("blocks.2", "blocks.4"),
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        levels: int = 3,
        num_neighbors: int = 9,
        scoring: Scoring = "fusion",
        blur_sigma: float = 4.0,
        matching: Matching = "positional",
        positional: PositionalSettings | Mapping[str, Any] = PositionalSettings(),
    ) -> None:
        super().__init__()
        settings = as_settings(PositionalSettings, positional)
        self.matching = check_choice("matching", matching, Matching)
        self.embedding = PatchEmbedding(
            backbone, tuple(layers), pre_trained=pre_trained, backbone_weights=backbone_weights
        )
        self.pyramid = PyramidBlocks(levels)
        self.num_neighbors = num_neighbors
        self.fusion = ScoreFusion(self.pyramid.num_blocks, check_choice("scoring", scoring, Scoring))
        # Same kernel as anomalib's GaussianBlur2d (PatchCore's sigma = 4), applied as two 1-D passes.
        self.blur = SeparableGaussianBlur(blur_sigma)
        self.memory = MemoryBank()  # one bank per block position: (num_blocks, M, D)
        self.positional = PositionalBank(settings.radius)  # every training image's feature grid
        self.position_baseline = settings.baseline
        self.position_scale = settings.scale
        self.unseen_margin = settings.unseen_margin
        self.register_buffer("baseline", torch.zeros(0))  # (1, 1, h, w) leave-one-out mean distance, if used
        self.register_buffer("scale", torch.zeros(0))  # (1, 1, h, w) floored leave-one-out spread, if used
        self.global_memory = MemoryBank()  # PatchCore's single bank: only when alignment cannot help
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

    @property
    def uses_global_bank(self) -> bool:
        """Whether this model fell back to PatchCore behaviour (a global bank, no alignment)."""
        return self.global_memory.num_groups > 0

    @property
    def uses_blocks(self) -> bool:
        """Whether the block banks (A-MES) score: ``blocks`` or ``both``, unless fallen back."""
        return not self.uses_global_bank and self.matching in {"blocks", "both"}

    @property
    def uses_positional(self) -> bool:
        """Whether the positional bank scores: ``positional`` or ``both``, unless fallen back."""
        return not self.uses_global_bank and self.matching in {"positional", "both"}

    def embed_full(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D, h, w) full-resolution patch features (no pyramid)."""
        return self.embedding(images)

    def fit_positional(self, features: torch.Tensor) -> None:
        """Keep (N, D, h, w) full-resolution features of aligned training images (and their baseline)."""
        self.positional.fit(features)
        self.baseline = torch.zeros(0, device=features.device)
        self.scale = torch.zeros(0, device=features.device)
        if self.position_baseline and len(features) > 1:
            distances = self.positional.leave_one_out(features)  # (N, h, w)
            self.baseline = distances.mean(0)[None, None]
            if self.position_scale:
                spread = distances.std(0)
                self.scale = spread.clamp_min(spread.median())[None, None]

    def fit_global(self, features: torch.Tensor, sampling_ratio: float, seed: int = 0) -> None:
        """PatchCore behaviour: one coreset of every patch of (N, D, h, w) features; the other banks are emptied."""
        d = features.shape[1]
        self.global_memory.fit(features.permute(0, 2, 3, 1).reshape(-1, d), sampling_ratio, seed=seed, progress=True)
        self.memory.bank = torch.empty(0, device=features.device)
        self.positional.clear()
        self.baseline = torch.zeros(0, device=features.device)
        self.scale = torch.zeros(0, device=features.device)

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
        """Block maps (B, nb, 1, h, w), block scores (B, nb), final map (B, 1, H, W) of the block banks."""
        embedding, (h, w) = self.embed(images)
        patch, scores = self.block_scores(embedding)
        block_maps = patch.reshape(patch.shape[0], self.num_blocks, 1, h, w)
        levels = self.pyramid.splice(block_maps, output_size=tuple(images.shape[-2:]))  # (B, N, 1, H, W)
        final = self.blur(levels.amax(dim=1))  # Eq. 1: pixel-wise max over levels
        return block_maps, scores, final

    def fill_unseen(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned images with unseen marks -> the images with the reference there, and (B, 1, H, W) coverage.

        A pixel is unseen where any channel is negative (the align step's ``mark_unseen`` writes the mark
        after warping, outside the photo's outline); without a reference (an untrained model) unseen
        pixels become 0.
        """
        covered = (images >= 0).all(dim=1, keepdim=True)
        fill = self.reference.permute(2, 0, 1)[None].to(images.dtype) / 255 if self.reference.numel() else 0.0
        return torch.where(covered, images, fill), covered.to(images.dtype)

    def worst_seen_patch(self, patch: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) patch scores, (B, 1, H, W) coverage -> (B,) worst patch away from unseen cells.

        A cell is unseen when the photograph covers less than all of it; it and every cell within
        ``unseen_margin`` cells of it are left out. If that leaves nothing, the worst patch of all counts.
        """
        worst = patch.flatten(1).amax(1)
        if self.unseen_margin is None:
            return worst
        unseen = (F.adaptive_avg_pool2d(covered, patch.shape[-2:]) < FULLY_SEEN).to(patch.dtype)
        margin = self.unseen_margin
        near_unseen = F.max_pool2d(unseen, 2 * margin + 1, stride=1, padding=margin) > 0 if margin else unseen > 0
        seen_worst = torch.where(near_unseen, patch.new_tensor(-UNSEEN_PENALTY), patch).flatten(1).amax(1)
        return torch.where(near_unseen.flatten(1).all(1), worst, seen_worst)

    def positional_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) positional scores of aligned images (see :meth:`positional_scores`)."""
        return self.positional_scores(self.embed_full(images))

    def positional_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) features -> (B, 1, h, w) positional patch scores.

        The distance of every patch to the training patches around its position, minus the baseline and
        over the scale where those are used.
        """
        distances = self.positional.nearest(features).unsqueeze(1)
        if self.baseline.numel():
            distances = distances - self.baseline
        if self.scale.numel():
            distances = distances / self.scale
        return distances

    def global_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PatchCore: (B,) re-weighted worst-patch scores and (B, 1, h, w) patch distances."""
        features = self.embed_full(images)
        b, d, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(1, b * h * w, d)
        nearest, nearest_idx = self.global_memory.nearest(queries)
        patch = nearest.reshape(1, b, h * w)
        scores = self.global_memory.reweighted_max(
            queries.reshape(1, b, h * w, d),
            patch,
            nearest_idx.reshape(1, b, h * w),
            num_neighbors=self.num_neighbors,
        )
        return scores[0], patch.reshape(b, 1, h, w)

    def _to_image(self, patch_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, h, w) -> (B, 1, H, W): bilinear, then the Gaussian blur (PatchCore's post-processing)."""
        return self.blur(F.interpolate(patch_map, size=size, mode="bilinear", align_corners=False))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Aligned (B, 3, H, W) images in [0, 1] -> ``InferenceBatch(pred_score, anomaly_map)``."""
        size = tuple(images.shape[-2:])
        if self.uses_global_bank:
            score, patch = self.global_scores(images)
            return InferenceBatch(pred_score=score, anomaly_map=self._to_image(patch, size))
        images, covered = self.fill_unseen(images)
        if not self.uses_blocks:
            patch = self.positional_map(images)
            score = self.worst_seen_patch(patch, covered)
            return InferenceBatch(pred_score=score, anomaly_map=self._to_image(patch, size))
        block_maps, scores, anomaly_map = self.maps_and_scores(images)
        if not self.uses_positional:
            return InferenceBatch(pred_score=self.fusion(block_maps, scores), anomaly_map=anomaly_map)
        # both: distances of the same features to two kinds of banks; the worse one counts
        patch = self.positional_map(images)
        worst_block = block_maps.flatten(1).amax(1)
        score = torch.maximum(self.worst_seen_patch(patch, covered), worst_block)
        return InferenceBatch(pred_score=score, anomaly_map=torch.maximum(anomaly_map, self._to_image(patch, size)))
