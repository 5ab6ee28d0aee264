"""Training data for F_fusion: block maps/scores of synthetic anomalies and augmented normal images."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.transforms.v2 import RandomAffine

from anomalib_ext.components.synthesis import cutpaste, cutpaste_scar, perlin_anomaly_generator
from anomalib_ext.models.amfs.settings import check_fusion_anomalies

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anomalib_ext.models.amfs.torch_model import AMFSModel

SMALL_CUTPASTE_AREA = (0.002, 0.02)


@torch.no_grad()
def fusion_training_set(
    model: AMFSModel,
    images: torch.Tensor,
    *,
    samples_per_image: int,
    texture_dir: str | None,
    seed: int,
    fill: torch.Tensor | None = None,
    kinds: Sequence[str] = ("perlin",),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps (N, nb, 1, h, w), scores (N, nb), labels (N,)) from held-out aligned images.

    For each image: ``samples_per_image`` synthetic anomalies, cycling through ``kinds`` (see
    ``FUSION_ANOMALIES``), and ``samples_per_image`` normals augmented by small translation, scaling and
    rotation (what residual misalignment looks like). Where the augmentation moves the image off the
    canvas, ``fill`` (the alignment reference, as at test time) shows through instead of black wedges,
    which would teach F_fusion that strong border responses are normal.
    """
    kinds = check_fusion_anomalies(kinds)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    perlin = perlin_anomaly_generator(texture_dir) if "perlin" in kinds else None
    augment = RandomAffine(degrees=3, translate=(0.02, 0.02), scale=(0.97, 1.03))
    anomalous, normal = [], []
    kind_cycle = itertools.cycle(kinds)
    for aligned in images:
        image = aligned.cpu()
        for _ in range(samples_per_image):
            kind = next(kind_cycle)
            if kind == "perlin":
                out, mask = perlin(image)
            elif kind == "cutpaste":
                out, mask = cutpaste(image, rng, area_ratio=SMALL_CUTPASTE_AREA)
            else:
                out, mask = cutpaste_scar(image, rng)
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
