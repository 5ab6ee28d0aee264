"""PyramidBlocks: the N-level block pyramid of AMFS's A-MES, and splicing block maps back.

Level i (1..N) cuts the image into a 2^(i-1) x 2^(i-1) grid; every block is brought to the common
size H/2^(N-1) x W/2^(N-1) (area averaging, exact for the integer factors involved), so the pyramid
holds (4^N - 1) / 3 blocks that one backbone processes at one resolution. Only reshapes, permutes,
pooling and interpolation: traceable by ``torch.export`` with a dynamic batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from torch import nn


def num_blocks(levels: int) -> int:
    """(4^N - 1) / 3: 1 + 4 + 16 + ... blocks."""
    return (4**levels - 1) // 3


def _grid(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, g*g, C, H/g, W/g), blocks in row-major order."""
    _, c, h, w = x.shape
    return x.reshape(-1, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, c, h // g, w // g)


def _ungrid(blocks: torch.Tensor, g: int) -> torch.Tensor:
    """(B, g*g, C, h, w) -> (B, C, g*h, g*w), the inverse of :func:`_grid`."""
    _, _, c, h, w = blocks.shape
    return blocks.reshape(-1, g, g, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, g * h, g * w)


class PyramidBlocks(nn.Module):
    """Split images into pyramid blocks and splice per-block maps back into per-level maps.

    Args:
        levels: number of pyramid levels N (AMFS default 3 → 21 blocks).
    """

    def __init__(self, levels: int = 3) -> None:
        super().__init__()
        if levels < 1:
            msg = f"levels must be >= 1, got {levels}"
            raise ValueError(msg)
        self.levels = levels

    @property
    def num_blocks(self) -> int:
        """(4^N - 1) / 3."""
        return num_blocks(self.levels)

    def level_slices(self) -> list[slice]:
        """Which entries of the block axis belong to each level."""
        slices, start = [], 0
        for i in range(self.levels):
            slices.append(slice(start, start + 4**i))
            start += 4**i
        return slices

    def split(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_blocks, C, H/2^(N-1), W/2^(N-1)); H and W divisible by 2^(N-1)."""
        factor = 2 ** (self.levels - 1)
        h, w = images.shape[-2:]
        if h % factor or w % factor:
            msg = f"Image size {h}x{w} must be divisible by {factor} for {self.levels} pyramid levels."
            raise ValueError(msg)
        blocks = []
        for i in range(self.levels):
            g = 2**i
            pooled = F.avg_pool2d(images, factor // g) if factor // g > 1 else images
            blocks.append(_grid(pooled, g))
        return torch.cat(blocks, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`split`, so the module can sit in a transform pipeline or graph."""
        return self.split(images)

    def splice(self, block_maps: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, num_blocks, C, h, w) block maps -> (B, N, C, H, W) per-level maps.

        Level i's blocks are put side by side (its native size g*h x g*w) and resized bilinearly to
        ``output_size`` (default: the finest level's size, h*2^(N-1) x w*2^(N-1)).
        """
        h, w = block_maps.shape[-2:]
        factor = 2 ** (self.levels - 1)
        size = output_size or (h * factor, w * factor)
        levels = []
        for i, part in enumerate(self.level_slices()):
            level = _ungrid(block_maps[:, part], 2**i)
            if tuple(level.shape[-2:]) != tuple(size):
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            levels.append(level)
        return torch.stack(levels, dim=1)
