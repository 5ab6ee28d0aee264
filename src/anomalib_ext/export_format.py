"""The export folder's format: ``metadata.json`` beside every exported IR, read and written here.

The IR holds pre-processor -> model -> post-processor (normalisation and thresholds included). The
host still has to know the input size, the host steps the graph cannot hold (see
:mod:`anomalib_ext.host_steps`; AMFS: alignment to its reference image), the precision, and which
package versions wrote it. Below both ``models`` (whose anomalib export routes write it too) and
``deploy`` (which reads it), so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_ext.errors import AnomalibExtError
from anomalib_ext.files import write_bytes_atomic
from anomalib_ext.host_steps import host_steps_of

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

# Bumped when the layout of metadata.json or the IR's inputs/outputs change in an incompatible way.
FORMAT_VERSION = 1
OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
METADATA_FILE = "metadata.json"


class ModelFilesError(AnomalibExtError, FileNotFoundError):
    """The export folder is missing a file the inferencer needs."""


class ModelVersionError(AnomalibExtError, RuntimeError):
    """The export was written by an incompatible version of anomalib-ext."""


def _versions() -> dict[str, str]:
    import anomalib
    import openvino

    import anomalib_ext

    return {
        "anomalib_ext": anomalib_ext.__version__,
        "anomalib": anomalib.__version__,
        "openvino": openvino.__version__,
    }


def pre_processor_steps(model: AnomalibModule) -> list:
    """The transforms of the model's pre-processor, in order (empty without one)."""
    from torchvision.transforms.v2 import Compose

    transform = getattr(getattr(model, "pre_processor", None), "transform", None)
    if transform is None:
        return []
    return list(transform.transforms) if isinstance(transform, Compose) else [transform]


def model_input_size(model: AnomalibModule) -> tuple[int, int] | None:
    """The size of the first ``Resize`` in the model's pre-processor, if any."""
    from torchvision.transforms.v2 import Resize

    for step in pre_processor_steps(model):
        if isinstance(step, Resize) and step.size is not None and len(step.size) == 2:
            return tuple(int(s) for s in step.size)
    return None


def normalize_step(model: AnomalibModule) -> Any | None:  # ruff: ignore[any-type] - a torchvision Normalize
    """The first ``Normalize`` in the model's pre-processor, if any."""
    from torchvision.transforms.v2 import Normalize

    return next((step for step in pre_processor_steps(model) if isinstance(step, Normalize)), None)


def _normalization(model: AnomalibModule) -> dict[str, Any] | None:
    """Mean/std of a ``Normalize`` in the model's pre-processor (it runs inside the IR), if any."""
    step = normalize_step(model)
    return None if step is None else {"mean": list(step.mean), "std": list(step.std), "in_graph": True}


def build_metadata(
    model: AnomalibModule,
    input_size: tuple[int, int],
    host_steps: dict[str, Any],
    *,
    precision: str = "FP32",
    batch: tuple[str | int, str] = ("dynamic", ""),
) -> dict[str, Any]:
    """Everything ``metadata.json`` says about an FP32 export of ``model`` (``files`` is added on writing)."""
    post = getattr(model, "post_processor", None)
    thresholds = {}
    if post is not None and hasattr(post, "image_threshold"):
        # Raw thresholds for reference; the IR's outputs are normalised so that 0.5 is the threshold.
        thresholds = {
            "image_raw": float(post.image_threshold),
            "pixel_raw": float(post.pixel_threshold),
            "normalized": 0.5,
        }
    return {
        "format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "class_path": f"{type(model).__module__}.{type(model).__qualname__}",
        "versions": _versions(),
        "precision": precision,
        "input": {
            "size": list(input_size),
            "layout": "NCHW",
            "batch": batch[0],  # "dynamic", or the one batch size the IR runs at (see anomalib_ext.ir_batch)
            **({"batch_note": batch[1]} if batch[1] else {}),
            "color": "RGB",
            "range": [0.0, 1.0],
        },
        "normalization": _normalization(model),
        "outputs": list(OUTPUT_NAMES),
        "thresholds": thresholds,
        "host_steps": host_steps,
    }


def write_metadata(folder: Path, metadata: dict[str, Any]) -> Path:
    """Write ``metadata.json``, listing every file of the export folder.

    A later export into the same folder then knows which files are ours to replace, and touches no others.
    """
    folder = Path(folder)
    files = sorted({p.name for p in folder.iterdir() if p.is_file()} | {METADATA_FILE})
    path = folder / METADATA_FILE
    write_bytes_atomic(path, json.dumps({**metadata, "files": files}, indent=1).encode())
    return path


def _check_fields(path: Path, metadata: dict[str, Any]) -> None:
    """The fields the inferencer reads, with their types: a clear error instead of a KeyError later."""
    fix = "Export the model again with `anomalib-ext export` (the file was edited or written by another tool)."
    size = metadata.get("input", {}).get("size") if isinstance(metadata.get("input"), dict) else None
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        msg = f"{path} has no valid input.size (two positive integers, H and W). {fix}"
        raise ModelFilesError(msg)
    if metadata.get("precision") not in {"FP32", "INT8"}:
        msg = f"{path} has no valid precision (FP32 or INT8). {fix}"
        raise ModelFilesError(msg)
    batch = metadata["input"].get("batch", "dynamic")
    if batch != "dynamic" and not (isinstance(batch, int) and batch > 0):
        msg = f'{path}: input.batch must be "dynamic" or a positive integer, got {batch!r}. {fix}'
        raise ModelFilesError(msg)
    if not isinstance(metadata.get("host_steps", {}), dict):
        msg = f"{path}: host_steps must be an object. {fix}"
        raise ModelFilesError(msg)


def write_export_metadata(
    model: AnomalibModule,
    folder: str | Path,
    input_size: tuple[int, int] | None = None,
    *,
    batch: tuple[str | int, str] | None = None,
) -> Path:
    """Save the model's host steps into ``folder`` and write its ``metadata.json`` (FP32).

    ``input_size`` defaults to the model's pre-processor size. Used by our export and by the anomalib
    export routes of our models (so ``anomalib export`` output runs in ``anomalib-ext infer`` too).
    ``batch``: what :func:`anomalib_ext.ir_batch.supported_batch` found; ``None`` checks the folder's
    ``model.xml`` (or ``model.onnx``) here.
    """
    size = tuple(input_size) if input_size else model_input_size(model)
    if size is None:
        msg = f"{type(model).__name__} has no Resize in its pre-processor: give input_size=(H, W)."
        raise ValueError(msg)
    if batch is None:
        batch = _checked_batch(Path(folder), size)
    host_steps = host_steps_of(model).save(Path(folder))
    return write_metadata(Path(folder), build_metadata(model, size, host_steps, batch=batch))


def _checked_batch(folder: Path, input_size: tuple[int, int]) -> tuple[str | int, str]:
    """:func:`~anomalib_ext.ir_batch.supported_batch` of the model file another exporter wrote into ``folder``."""
    import openvino as ov

    from anomalib_ext.ir_batch import supported_batch

    found = [folder / name for name in ("model.xml", "model.onnx") if (folder / name).is_file()]
    if not found:
        return "dynamic", "not checked: no model.xml or model.onnx beside it"
    return supported_batch(ov.Core().read_model(str(found[0])), input_size)


def read_metadata(folder: Path) -> dict[str, Any]:
    """Read and check ``metadata.json``: clear errors for a missing file or an incompatible export."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        msg = (
            f"{path} is missing: this folder was not written by `anomalib-ext export`. "
            "Export the checkpoint with `anomalib-ext export --model NAME --ckpt_path CKPT --output DIR`."
        )
        raise ModelFilesError(msg)
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        msg = f"{path} is not valid JSON ({error}); export the model again."
        raise ModelFilesError(msg) from error
    if not isinstance(metadata, dict):
        msg = f"{path} does not hold a JSON object; export the model again."
        raise ModelFilesError(msg)
    found = metadata.get("format_version")
    if found != FORMAT_VERSION:
        written_by = metadata.get("versions", {}).get("anomalib_ext", "an unknown version")
        msg = (
            f"{path}: export format {found} (written by anomalib-ext {written_by}) but this anomalib-ext "
            f"({_versions()['anomalib_ext']}) reads format {FORMAT_VERSION}. Re-export the checkpoint with this "
            "version, or install the version that wrote it."
        )
        raise ModelVersionError(msg)
    _check_fields(path, metadata)
    return metadata
