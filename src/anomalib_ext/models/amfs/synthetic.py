"""Training data for F_fusion: block maps/scores of synthetic anomalies and augmented normal images."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import RandomAffine

from anomalib_ext.components.synthesis import perlin_anomaly_generator


@torch.no_grad()
def fusion_training_set(model, images: torch.Tensor, per_image: int, texture_dir: str | None, seed: int, fill: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps (N, nb, 1, h, w), scores (N, nb), labels (N,)) from held-out aligned images.

    For each image: ``per_image`` DRAEM-style anomalies (Perlin regions filled with texture) and
    ``per_image`` normals augmented by small translation, scaling and rotation (what residual
    misalignment looks like). Where the augmentation moves the image off the canvas, ``fill`` (the
    alignment reference, as at test time) shows through instead of black wedges, which would teach
    F_fusion that strong border responses are normal.
    """
    torch.manual_seed(seed)
    generator = perlin_anomaly_generator(texture_dir)
    augment = RandomAffine(degrees=3, translate=(0.02, 0.02), scale=(0.97, 1.03))
    anomalous, normal = [], []
    for image in images:
        image = image.cpu()
        for _ in range(per_image):
            out, mask = generator(image)
            if mask.sum() > 0:
                anomalous.append(out)
            normal.append(_augment_normal(augment, image, fill))
    samples = torch.stack(anomalous + normal).to(images.device)
    labels = torch.cat([torch.ones(len(anomalous)), torch.zeros(len(normal))]).long()
    maps, scores = [], []
    for chunk in samples.split(8):
        block_maps, block_scores, _ = model.maps_and_scores(chunk)
        maps.append(block_maps.cpu())
        scores.append(block_scores.cpu())
    return torch.cat(maps), torch.cat(scores), labels


def _augment_normal(augment: RandomAffine, image: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    if fill is None:
        return augment(image)
    # One random affine for image and a coverage channel, then the fill where coverage is missing.
    moved = augment(torch.cat([image, torch.ones_like(image[:1])]))
    coverage = moved[3:].clamp(0, 1)
    return moved[:3] * coverage + fill.to(image) * (1 - coverage)
