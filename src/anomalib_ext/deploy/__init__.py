"""OpenVINO deployment: export (FP32, dynamic batch, metadata), NNCF INT8, batched inference, evaluation.

Importing it declines OpenVINO/NNCF telemetry in this process (``ANOMALIB_EXT_TELEMETRY=1`` opts in).
"""

from anomalib_ext.offline import disable_telemetry

disable_telemetry()

from anomalib_ext.deploy.export import export_openvino
from anomalib_ext.deploy.inferencer import Inferencer, Prediction, collect_images
from anomalib_ext.deploy.outputs import run_inference, write_outputs
from anomalib_ext.deploy.quantize import quantize_openvino

__all__ = [
    "Inferencer",
    "Prediction",
    "collect_images",
    "export_openvino",
    "quantize_openvino",
    "run_inference",
    "write_outputs",
]
