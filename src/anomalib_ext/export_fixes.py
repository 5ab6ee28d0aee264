"""Tracing fixes for anomalib's own models, whose eval forward does not trace to a graph with a dynamic batch.

A traced graph keeps Python numbers as constants. anomalib 2.7's ``PatchcoreModel.nearest_neighbors``
searches the memory bank in chunks of ``DEFAULT_CHUNK_SIZE`` (1024) patches when a batch has more patches
than that: traced at batch 1 with more than 1024 patches (lite2/lite0 at 512 px: 64 x 64 = 4096) the
chunk loop is unrolled with the trace's patch count, so at batch 8 the graph still returns 4096 scores
and its final reshape to ``(8, 1, 64, 64)`` fails (seen: ``anomalib-ext infer`` on a 512 px Patchcore).
While tracing, one search over all patches (the path anomalib takes below 1024 patches) is the same
computation with a batch-independent graph; its memory grows with the batch as our own models' k-NN does.

Kept here (base layer) because both the deployment code and models built on Patchcore (AlignedPatchcore)
trace through anomalib's code; :func:`traceable` is the one entry point.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Generator

    from torch import nn


def _contains_patchcore(model: nn.Module) -> bool:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    return any(isinstance(module, PatchcoreModel) for module in model.modules())


@contextlib.contextmanager
def traceable(model: nn.Module) -> Generator[None]:
    """Within this block, ``model``'s eval forward traces with a batch-independent graph (see the module docstring)."""
    if not _contains_patchcore(model):
        yield
        return
    from anomalib.models.image.patchcore import torch_model

    chunk_size = torch_model.DEFAULT_CHUNK_SIZE
    torch_model.DEFAULT_CHUNK_SIZE = 2**62  # read at call time: every batch takes the unchunked search
    try:
        yield
    finally:
        torch_model.DEFAULT_CHUNK_SIZE = chunk_size
