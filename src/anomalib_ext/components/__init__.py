"""Building blocks shared by several methods (one concern per module)."""

from anomalib_ext.components.coreset import FastKCenterGreedy, coverage_radius, greedy_coreset_indices, use_fast_coreset
from anomalib_ext.components.embedding import PatchEmbedding
from anomalib_ext.components.memory_bank import MemoryBank, torch_knn

__all__ = [
    "FastKCenterGreedy",
    "MemoryBank",
    "PatchEmbedding",
    "coverage_radius",
    "greedy_coreset_indices",
    "torch_knn",
    "use_fast_coreset",
]
