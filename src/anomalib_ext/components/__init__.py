"""Building blocks shared by several methods (one concern per module)."""

from anomalib_ext.components.coreset import coverage_radius, greedy_coreset_indices
from anomalib_ext.components.memory_bank import MemoryBank, torch_knn

__all__ = ["MemoryBank", "coverage_radius", "greedy_coreset_indices", "torch_knn"]
