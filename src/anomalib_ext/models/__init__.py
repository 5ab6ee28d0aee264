"""Models of the plugin (each an anomalib ``AnomalibModule``)."""

from anomalib_ext.models.aligned import AlignedPatchcore, aligned
from anomalib_ext.models.amfs import AMFS

__all__ = ["AMFS", "AlignedPatchcore", "aligned"]
