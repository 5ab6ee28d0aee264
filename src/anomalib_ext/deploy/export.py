"""One OpenVINO export path for every model (ours and anomalib's): IR with a dynamic batch + metadata.

The graph is the same one anomalib exports (``AnomalibModule.forward``: pre-processor -> model ->
post-processor, outputs ``pred_score, pred_label, anomaly_map, pred_mask``), so anomalib's own
``OpenVINOInferencer`` reads it too. It is converted with OpenVINO's PyTorch frontend rather than
anomalib's ONNX (dynamo) route: that route bakes the example batch into anomalib's Patchcore graph
(batch 2, then it fails on one image) and took 4x longer on our models (40 s vs 10 s at 128 px).

Models with host steps (:mod:`anomalib_ext.host_steps`) return them from ``host_steps()``; each step
writes what it needs (alignment: the reference image) into the export folder and its settings into
``metadata.json``.

The batch is checked, not assumed: the IR must run at batch 3 and give each image the outputs it gets
alone (:func:`anomalib_ext.ir_batch.supported_batch`) before ``metadata.json`` says ``"batch": "dynamic"``.
A graph that keeps a traced batch is exported with a fixed batch instead (with a warning saying why), and
the Inferencer then runs larger batches that many images at a time. anomalib's Patchcore, which did that
above 1024 patches per image, is traced through :func:`anomalib_ext.export_fixes.traceable`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from anomalib_ext.deploy.folders import staged_folder
from anomalib_ext.export_fixes import traceable
from anomalib_ext.export_format import OUTPUT_NAMES, model_input_size, write_export_metadata
from anomalib_ext.ir_batch import supported_batch

if TYPE_CHECKING:
    from collections.abc import Sequence

    import openvino as ov
    from anomalib.models.components import AnomalibModule

logger = logging.getLogger(__name__)


def convert_to_openvino(model: AnomalibModule, input_size: tuple[int, int]) -> ov.Model:
    """``ov.Model`` of the eval-mode forward with inputs ``(?, 3, H, W)`` and anomalib's output names.

    The batch is declared dynamic; whether the graph really is, :func:`export_openvino` checks.
    """
    import openvino as ov

    model = model.eval().cpu()
    height, width = input_size
    # A LightningModule not attached to a Trainer (loaded from a checkpoint) raises on `.trainer`, which
    # tracing touches; Lightning's own to_torchscript sets this flag for the same reason.
    scripting = getattr(model, "_jit_is_scripting", None)
    if scripting is not None:
        model._jit_is_scripting = True  # ruff: ignore[private-member-access]
    try:
        with torch.no_grad(), traceable(model):
            ov_model = ov.convert_model(
                model,
                example_input=torch.rand(1, 3, height, width),
                input=[(-1, 3, height, width)],
            )
    finally:
        if scripting is not None:
            model._jit_is_scripting = scripting  # ruff: ignore[private-member-access]
    if len(ov_model.outputs) != len(OUTPUT_NAMES):
        msg = f"{type(model).__name__} exported {len(ov_model.outputs)} outputs; expected {OUTPUT_NAMES}."
        raise RuntimeError(msg)
    for output, name in zip(ov_model.outputs, OUTPUT_NAMES, strict=True):
        output.get_tensor().set_names({name})
    return ov_model


def export_openvino(
    model: AnomalibModule,
    output: str | Path,
    input_size: tuple[int, int] | None = None,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Write ``model.xml/.bin`` (FP32), host-step files and ``metadata.json`` to ``output``.

    The batch is dynamic when the graph passes :func:`~anomalib_ext.ir_batch.supported_batch`, else fixed
    (``metadata.json``: ``input.batch`` and ``input.batch_note``).

    The folder is written in a temporary sibling and moved into place at the end, so a failed export
    leaves nothing half-written; an earlier export at ``output`` is replaced only on success, and only
    its own files. A non-empty folder that is not an export is refused unless ``overwrite`` (and then
    only the export's files are written into it); ``inputs`` (e.g. the checkpoint) are protected:
    see :func:`anomalib_ext.deploy.folders.check_export_target`.
    """
    import openvino as ov

    output = Path(output)
    input_size = tuple(input_size) if input_size else model_input_size(model)
    if input_size is None:
        msg = f"{type(model).__name__} has no Resize in its pre-processor: give input_size=(H, W)."
        raise ValueError(msg)
    with staged_folder(output, inputs, overwrite) as staging:
        ov_model = convert_to_openvino(model, input_size)
        batch, reason = supported_batch(ov_model, input_size)
        if batch != "dynamic":
            logger.warning(
                "%s: the exported graph has no dynamic batch (%s); it is exported with a fixed batch of %d, "
                "and the Inferencer runs larger batches %d images at a time.",
                type(model).__name__,
                reason,
                batch,
                batch,
            )
            ov_model.reshape({0: [batch, 3, *input_size]})
        ov.save_model(ov_model, staging / "model.xml", compress_to_fp16=False)
        # host-step files (AMFS: reference) + metadata.json
        write_export_metadata(model, staging, input_size, batch=(batch, reason))
    logger.info("Exported %s to %s", type(model).__name__, output / "model.xml")
    return output / "model.xml"
