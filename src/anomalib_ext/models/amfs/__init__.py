"""AMFS: Aligned Matching and Fused Scoring (ORB alignment, pyramid-block memory banks, F_fusion)."""

from anomalib_ext.models.amfs.lightning_model import AMFS
from anomalib_ext.models.amfs.torch_model import AMFSModel

__all__ = ["AMFS", "AMFSModel"]
