"""Positional memory: each test patch is compared only with training patches near the same (aligned) place.

After alignment a patch should look like what the training images show at about the same position: a
letter that is normal *somewhere* in the print is still anomalous *here*. The bank keeps the full
feature grid of every training image, ``(N, D, h, w)``, and the distance of a test patch at ``p`` is
the smallest L2 distance to any training patch at ``p + o`` for every offset ``|o| <= radius`` (cells).

Vectorised for a dynamic batch and traceable: the test features are shifted once per offset (a Python
loop over the ``(2r + 1)^2`` offsets, never over positions), stacked, and compared with the training
patches of every position in one batched matmul, ``(h*w, K*B, D) @ (h*w, D, N)``. The shifts are undone
on the (small) distance maps, so the large training stack is never copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]
from anomalib.models.components import DynamicBufferMixin
from torch import nn

# Distance given to offsets that leave the grid: larger than any real squared feature distance.
OUTSIDE = 1e12


class PositionalBank(DynamicBufferMixin, nn.Module):
    """Training feature grids ``(N, D, h, w)``, searched within ``radius`` cells of each position.

    Args:
        radius: largest offset (in feature cells, per axis) between a test patch and the training patches
            it is compared with: covers residual misalignment (a cell is 8 px at the default stride).
    """

    def __init__(self, radius: int = 1) -> None:
        super().__init__()
        if radius < 0:
            msg = f"radius must be >= 0 feature cells, got {radius}."
            raise ValueError(msg)
        self.radius = radius
        # (h*w, D, N): per position, the features of the N training images, ready for a batched matmul.
        self.register_buffer("features", torch.empty(0))
        self.register_buffer("squared_norms", torch.empty(0))  # (h*w, 1, N)

    @property
    def num_images(self) -> int:
        """N, the training images in the bank (0 before fitting)."""
        return int(self.features.shape[2]) if self.features.ndim == 3 else 0

    def fit(self, features: torch.Tensor) -> None:
        """Keep (N, D, h, w) training features (aligned images)."""
        n, d, h, w = features.shape
        stack = features.detach().float().permute(2, 3, 1, 0).reshape(h * w, d, n).contiguous()
        self.features = stack
        self.squared_norms = stack.pow(2).sum(1, keepdim=True)

    def clear(self) -> None:
        """Empty the bank (``num_images`` 0)."""
        self.features = torch.empty(0, device=self.features.device)
        self.squared_norms = torch.empty(0, device=self.features.device)

    def offsets(self) -> list[tuple[int, int]]:
        """Every (dy, dx) with |dy|, |dx| <= radius."""
        r = self.radius
        return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]

    def nearest(self, queries: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, h, w) test features -> (B, h, w) L2 distance to the nearest training patch within the radius.

        ``exclude``: (B,) index of a bank image each query must not be matched with (leave-one-out on the
        training images themselves, e.g. for :meth:`leave_one_out`).
        """
        if self.num_images == 0:
            msg = "The positional bank is empty: train the model before scoring."
            raise RuntimeError(msg)
        b, d, h, w = queries.shape
        r = self.radius
        offsets = self.offsets()
        padded = F.pad(queries, (r, r, r, r))
        # Shift s_o(q) = x(q - o): compared with the training patch at q, it is the test patch at p = q - o
        # against the training patch at p + o.
        shifted = torch.stack([padded[:, :, r - dy : r - dy + h, r - dx : r - dx + w] for dy, dx in offsets])
        shifted = shifted.permute(3, 4, 0, 1, 2).reshape(h * w, len(offsets) * b, d)  # (hw, K*B, D)
        dots = torch.bmm(shifted, self.features)  # (hw, K*B, N)
        candidates = self.squared_norms - 2 * dots
        if exclude is not None:  # row k*B + b of the K*B axis is query b at offset k
            own = F.one_hot(exclude, self.num_images).to(candidates.dtype).repeat(len(offsets), 1)  # (K*B, N)
            candidates = candidates + OUTSIDE * own
        squared = candidates.amin(dim=2) + shifted.pow(2).sum(-1)  # (hw, K*B)
        squared = squared.reshape(h, w, len(offsets), b).permute(2, 3, 0, 1)  # (K, B, h, w), indexed by q
        # Undo the shift: the distance of p at offset o sits at q = p + o. Offsets that leave the grid
        # (p + o outside) read the padding and never win the minimum.
        squared = F.pad(squared, (r, r, r, r), value=OUTSIDE)
        back = torch.stack([
            squared[k, :, r + dy : r + dy + h, r + dx : r + dx + w] for k, (dy, dx) in enumerate(offsets)
        ])
        return back.amin(dim=0).clamp_min(0).sqrt()

    def leave_one_out(self, features: torch.Tensor, *, chunk: int = 8) -> torch.Tensor:
        """(N, h, w) distances of the bank's own N images (``features``, as fitted) to the other N - 1."""
        indices = torch.arange(len(features), device=features.device)
        return torch.cat([
            self.nearest(part, exclude=index)
            for part, index in zip(features.split(chunk), indices.split(chunk), strict=True)
        ])
