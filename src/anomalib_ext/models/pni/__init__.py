"""PNI (ICCV 2023): position- and neighbourhood-conditioned normal-feature distributions (issue 13).

Being built: the model (coresets, position histogram, neighbourhood MLP, thresholded score) trains,
tests and exports; the refinement network and the measurements follow.
"""

from anomalib_ext.models.pni.lightning_model import PNI, AlignedPNI
from anomalib_ext.models.pni.torch_model import PNIModel

__all__ = ["PNI", "AlignedPNI", "PNIModel"]
