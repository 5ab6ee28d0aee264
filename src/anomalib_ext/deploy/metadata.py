"""``metadata.json`` beside every exported IR: what the host needs to run the model and check it.

The IR holds pre-processor -> model -> post-processor (normalisation and thresholds included). The
host still has to know the input size, any host-side step the graph cannot hold (AMFS's alignment to
its reference image), the precision, and which package versions wrote it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
# Bumped when the layout of metadata.json or the IR's inputs/outputs change in an incompatible way.
FORMAT_VERSION = 1
OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask")


class ModelFilesError(FileNotFoundError):
    """The export folder is missing a file the inferencer needs."""


class ModelVersionError(RuntimeError):
    """The export was written by an incompatible version of anomalib-ext."""


def _versions() -> dict[str, str]:
    import anomalib
    import openvino

    import anomalib_ext

    return {"anomalib_ext": anomalib_ext.__version__, "anomalib": anomalib.__version__, "openvino": openvino.__version__}


def pre_processor_steps(model) -> list:
    """The transforms of the model's pre-processor, in order (empty without one)."""
    from torchvision.transforms.v2 import Compose

    transform = getattr(getattr(model, "pre_processor", None), "transform", None)
    if transform is None:
        return []
    return list(transform.transforms) if isinstance(transform, Compose) else [transform]


def _normalization(model) -> dict[str, Any] | None:
    """Mean/std of a ``Normalize`` in the model's pre-processor (it runs inside the IR), if any."""
    from torchvision.transforms.v2 import Normalize

    for step in pre_processor_steps(model):
        if isinstance(step, Normalize):
            return {"mean": list(step.mean), "std": list(step.std), "in_graph": True}
    return None


def build_metadata(model, input_size: tuple[int, int], host_steps: dict[str, Any], precision: str = "FP32") -> dict[str, Any]:
    post = getattr(model, "post_processor", None)
    thresholds = {}
    if post is not None and hasattr(post, "image_threshold"):
        # Raw thresholds for reference; the IR's outputs are normalised so that 0.5 is the threshold.
        thresholds = {"image_raw": float(post.image_threshold), "pixel_raw": float(post.pixel_threshold), "normalized": 0.5}
    return {
        "format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "class_path": f"{type(model).__module__}.{type(model).__qualname__}",
        "versions": _versions(),
        "precision": precision,
        "input": {"size": list(input_size), "layout": "NCHW", "batch": "dynamic", "color": "RGB", "range": [0.0, 1.0]},
        "normalization": _normalization(model),
        "outputs": list(OUTPUT_NAMES),
        "thresholds": thresholds,
        "host_steps": host_steps,
    }


def write_metadata(folder: Path, metadata: dict[str, Any]) -> Path:
    path = Path(folder) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=1))
    return path


def read_metadata(folder: Path) -> dict[str, Any]:
    """Read and check ``metadata.json``: clear errors for a missing file or an incompatible export."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        msg = (f"{path} is missing: this folder was not written by `anomalib-ext export`. "
               "Export the checkpoint with `anomalib-ext export --model NAME --ckpt_path CKPT --output DIR`.")
        raise ModelFilesError(msg)
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFilesError(f"{path} is not valid JSON ({error}); export the model again.") from error
    found = metadata.get("format_version")
    if found != FORMAT_VERSION:
        written_by = metadata.get("versions", {}).get("anomalib_ext", "an unknown version")
        msg = (f"{path}: export format {found} (written by anomalib-ext {written_by}) but this anomalib-ext "
               f"({_versions()['anomalib_ext']}) reads format {FORMAT_VERSION}. Re-export the checkpoint with this "
               "version, or install the version that wrote it.")
        raise ModelVersionError(msg)
    return metadata


@contextmanager
def staged_folder(output: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``output`` to write an export into; it replaces ``output`` only when the
    block succeeds, and is removed when it fails, so no export is ever left half-written."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield staging
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
