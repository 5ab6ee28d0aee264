"""Training data for F_fusion: block maps/scores of synthetic anomalies and augmented normal images."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import RandomAffine

from anomalib_ext.components.synthesis import perlin_anomaly_generator


@torch.no_grad()
def fusion_training_set(model, images: torch.Tensor, per_image: int, texture_dir: str | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps (N, nb, 1, h, w), scores (N, nb), labels (N,)) from held-out aligned images.

    For each image: ``per_image`` DRAEM-style anomalies (Perlin regions filled with texture) and
    ``per_image`` normals augmented by small translation, scaling and rotation (what residual
    misalignment looks like).
    """
    torch.manual_seed(seed)
    generator = perlin_anomaly_generator(texture_dir)
    augment = RandomAffine(degrees=3, translate=(0.02, 0.02), scale=(0.97, 1.03))
    anomalous, normal = [], []
    for image in images:
        for _ in range(per_image):
            out, mask = generator(image.cpu())
            if mask.sum() > 0:
                anomalous.append(out)
            normal.append(augment(image.cpu()))
    samples = torch.stack(anomalous + normal).to(images.device)
    labels = torch.cat([torch.ones(len(anomalous)), torch.zeros(len(normal))]).long()
    maps, scores = [], []
    for chunk in samples.split(8):
        block_maps, block_scores, _ = model.maps_and_scores(chunk)
        maps.append(block_maps.cpu())
        scores.append(block_scores.cpu())
    return torch.cat(maps), torch.cat(scores), labels
