"""F_fusion on synthetic block maps: it must learn to raise the image score of one anomalous block."""

import pytest
import torch

from anomalib_ext.models.amfs.fusion import ScoreFusion


def _blocks(n: int, nb: int, anomalous: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    maps = 1 + 0.1 * torch.rand(n, nb, 1, 8, 8, generator=generator)
    if anomalous:  # a bright spot in one random block per image, as a small defect gives
        block = torch.randint(0, nb, (n,), generator=generator)
        maps[torch.arange(n), block, :, 2:5, 2:5] += 2.0
    return maps, maps.flatten(2).amax(-1)


def _auroc(normal: torch.Tensor, anomalous: torch.Tensor) -> float:
    return float((anomalous[:, None] > normal[None]).float().mean())


@pytest.mark.parametrize("num_blocks", [21, 85])  # 3 and 4 pyramid levels
def test_fusion_learns_one_anomalous_block_among_many(num_blocks):
    generator = torch.Generator().manual_seed(0)
    normal_maps, normal_scores = _blocks(48, num_blocks, False, generator)
    anomal_maps, anomal_scores = _blocks(48, num_blocks, True, generator)
    fusion = ScoreFusion(num_blocks, "fusion")
    losses = fusion.fit(
        torch.cat([normal_maps, anomal_maps]),
        torch.cat([normal_scores, anomal_scores]),
        torch.cat([torch.zeros(48), torch.ones(48)]).long(),
        epochs=12,
    )
    assert losses[-1] < losses[0]
    test_normal, test_normal_scores = _blocks(32, num_blocks, False, generator)
    test_anomal, test_anomal_scores = _blocks(32, num_blocks, True, generator)
    with torch.no_grad():
        normal = fusion(test_normal, test_normal_scores)
        anomal = fusion(test_anomal, test_anomal_scores)
        weights = fusion.weights(test_anomal)
    assert _auroc(normal, anomal) > 0.95
    assert weights.max() > 0.05  # not collapsed to zero (what saturated training did at 85 blocks)
