"""Which batch sizes an exported OpenVINO IR really runs at: checked before ``metadata.json`` says so.

A graph traced at batch 1 can keep the trace's batch (or a count derived from it) as a constant while
its input is still declared dynamic: it then fails in ``reshape`` at another batch, or worse, runs and
mixes images. anomalib's Patchcore at 512 px did the first (see :mod:`anomalib_ext.export_fixes`).
:func:`supported_batch` reshapes the IR to a batch of :data:`PROBE_BATCH` and to batch 1, runs both on
the same images and compares each image's outputs. Only an IR that passes is written as
``"batch": "dynamic"``; otherwise the export fixes the batch at a size that runs, says so in the metadata,
and the Inferencer runs larger batches that many images at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import openvino as ov

PROBE_BATCH = 3  # neither the trace's batch (1) nor a power of two a graph might special-case
FALLBACK_BATCHES = (1, 2)  # tried in turn when the batch is not dynamic (anomalib's ONNX route traces at 2)
# Per-image outputs must agree this closely between one batch and the images alone (f32 on both; the
# contract test holds the export to a tighter 1e-4 on its real images).
RTOL, ATOL = 1e-3, 1e-3


class FixedBatchError(RuntimeError):
    """An IR that runs at none of the batch sizes tried."""


def _compiled(core: ov.Core, model: ov.Model, images_shape: tuple[int, ...]) -> ov.InferRequest:
    """An infer request of ``model`` reshaped to ``images_shape`` (B, 3, H, W) and compiled in f32."""
    model = model.clone()
    model.reshape({0: list(images_shape)})
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()


def _outputs(request: ov.InferRequest, images: np.ndarray) -> list[np.ndarray]:
    """The float outputs of one inference on ``images``."""
    result = request.infer({0: images})
    return [np.asarray(value) for value in result.values() if np.asarray(value).dtype.kind == "f"]


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def supported_batch(model: ov.Model, input_size: tuple[int, int]) -> tuple[str | int, str]:
    """``("dynamic", "")`` when ``model`` runs at any batch, else ``(a batch it runs at, why not dynamic)``.

    Raises :class:`FixedBatchError` when it runs at none of batch :data:`PROBE_BATCH`, 1 or 2.
    """
    import openvino as ov

    core = ov.Core()
    height, width = input_size
    # Mid-grey with texture: images a model scores without every output clamped at the same value.
    rng = np.random.default_rng(0)
    images = (0.45 + 0.1 * rng.random((PROBE_BATCH, 3, height, width))).astype(np.float32)
    declared = model.inputs[0].get_partial_shape()[0]
    if declared.is_static:
        candidates, reason = (declared.get_length(),), f"its input declares a fixed batch of {declared.get_length()}"
    else:
        try:
            together = _outputs(_compiled(core, model, images.shape), images)
            single = _compiled(core, model, (1, *images.shape[1:]))  # compiled once for the three images
            alone = [_outputs(single, images[i : i + 1]) for i in range(PROBE_BATCH)]
        except RuntimeError as error:
            reason = f"it does not run at batch {PROBE_BATCH}: {_first_line(error)}"
        else:
            same = all(
                np.allclose(batched[i], by_itself[0], rtol=RTOL, atol=ATOL)
                for i, outputs in enumerate(alone)
                for batched, by_itself in zip(together, outputs, strict=True)
            )
            if same:
                return "dynamic", ""
            reason = f"at batch {PROBE_BATCH} its outputs differ from those of each image alone"
        candidates = FALLBACK_BATCHES
    for batch in candidates:
        try:
            shape = (batch, *images.shape[1:])
            _outputs(_compiled(core, model, shape), np.resize(images, shape))
        except RuntimeError:  # the next size may run
            continue
        return batch, reason
    msg = f"The exported graph runs at none of the batch sizes {candidates}: {reason}."
    raise FixedBatchError(msg)
