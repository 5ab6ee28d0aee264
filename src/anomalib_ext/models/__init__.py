"""Models of the plugin (each an anomalib ``AnomalibModule``)."""

from anomalib_ext.models.aligned import AlignedPatchcore, aligned
from anomalib_ext.models.amfs import AMFS
from anomalib_ext.models.pni import PNI, AlignedPNI

__all__ = ["AMFS", "PNI", "AlignedPNI", "AlignedPatchcore", "aligned"]
