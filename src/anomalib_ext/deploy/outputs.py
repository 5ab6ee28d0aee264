"""What ``anomalib-ext infer`` writes: anomaly maps, binary masks, overlays and a CSV of scores.

Safe to point anywhere: the folder is checked (a folder, writable, every sub-folder too) before
any image is predicted; one run at a time holds it (:class:`~anomalib_ext.deploy.folders.OutputLock`);
every file is written to a temporary name and renamed, so a full disk leaves no truncated or 0-byte
file; ``scores.csv`` lists every input, failed ones with their error, and is written last.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from anomalib_ext.data.mvtec_like import read_rgb
from anomalib_ext.deploy.folders import OutputLock
from anomalib_ext.files import OutputFolderError, write_bytes_atomic

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from anomalib_ext.deploy.inferencer import Prediction

SUBFOLDERS = ("maps", "masks", "overlays")
SCORES_FILE = "scores.csv"


@dataclass
class InferenceResult:
    """One input of a run: its prediction, or the error that kept it from one."""

    path: str
    prediction: Prediction | None
    error: str | None = None


def overlay(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image with the anomaly map as a jet heat map and the predicted mask outlined in red."""
    h, w = image.shape[:2]
    heat = cv2.resize(np.clip(anomaly_map, 0, 1).astype(np.float32), (w, h))
    heat = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (0.6 * image + 0.4 * heat).astype(np.uint8)
    contours, _ = cv2.findContours(
        cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST),
        cv2.RETR_EXTERNAL,
        cv2.CHAIN_APPROX_SIMPLE,
    )
    return cv2.drawContours(np.ascontiguousarray(blended), contours, -1, (255, 0, 0), 2)


def prepare_output_folder(output: str | Path) -> Path:
    """Create ``output`` and its sub-folders and prove each is writable, before any inference.

    Raises:
        OutputFolderError: ``output`` (or a sub-folder) is a file, cannot be created, or is not writable.
    """
    output = Path(output)
    for folder in (output, *(output / sub for sub in SUBFOLDERS)):
        if folder.exists() and not folder.is_dir():
            msg = f"{folder} is a file, not a folder: give another --output or move the file away."
            raise OutputFolderError(msg)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"x")  # a byte, not an empty file: a full disk or quota refuses only real data
            probe.unlink()
        except OSError as error:
            msg = f"Cannot write to {folder}: {error.strerror or error}. Fix its permissions or give another --output."
            raise OutputFolderError(
                msg,
            ) from error
    return output


def _encode(path: Path, image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(path.suffix, image)
    if not ok:
        msg = f"Could not encode {path} ({image.shape}, {image.dtype})."
        raise OutputFolderError(msg)
    return buffer.tobytes()


def write_prediction(prediction: Prediction, output: Path, index: int) -> None:
    """Map (16-bit PNG, normalised map x 65535), mask and overlay of one prediction, each written atomically."""
    stem = f"{index:05d}_{Path(prediction.path).stem}"  # the index keeps same-named files from different folders apart
    files = {
        output / "maps" / f"{stem}.png": (np.clip(prediction.anomaly_map, 0, 1) * 65535).astype(np.uint16),
        output / "masks" / f"{stem}.png": prediction.mask.astype(np.uint8) * 255,
        output / "overlays" / f"{stem}.jpg": overlay(
            read_rgb(prediction.path),
            prediction.anomaly_map,
            prediction.mask,
        )[..., ::-1],
    }
    for path, image in files.items():
        write_bytes_atomic(path, _encode(path, image))


def scores_csv(results: Iterable[InferenceResult], timing: bool = False) -> str:
    """``path,status,score,label[,time_ms],error``: one row per input, failed ones with an empty score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "status", "score", "label"] + (["time_ms"] if timing else []) + ["error"])
    for result in results:
        p = result.prediction
        if p is None:
            writer.writerow([result.path, "error", "", ""] + ([""] if timing else []) + [result.error])
        else:
            row = [p.path, "ok", f"{p.score:.6f}", "anomalous" if p.label else "normal"]
            writer.writerow(row + ([f"{p.time_ms:.2f}"] if timing else []) + [""])
    return buffer.getvalue()


def write_outputs(predictions: Iterable[Prediction], output: Path, timing: bool = False) -> Path:
    """Maps, masks, overlays and ``scores.csv`` under ``output`` for predictions made in memory."""
    output = prepare_output_folder(output)
    results = [InferenceResult(p.path, p) for p in predictions]
    for index, result in enumerate(results):
        write_prediction(result.prediction, output, index)
    write_bytes_atomic(output / SCORES_FILE, scores_csv(results, timing).encode())
    return output / SCORES_FILE


def run_inference(
    model_dir: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    device: str = "CPU",
    batch_size: int = 8,
    timing: bool = False,
    num_threads: int | None = None,
    precision: str = "f32",
    int8_arithmetic: str = "auto",
) -> list[InferenceResult]:
    """Predict every image of files/folders/globs and write the outputs batch by batch.

    The model and the inputs are checked first (nothing is created when they fail), then the output
    folder is checked and locked before any image is predicted; folder and glob searches skip it and
    any earlier output folder. Unusable images are listed in ``scores.csv`` with their
    error (``status`` = ``error``) and in the returned results; a failed write stops the run with an
    :class:`OutputFolderError` naming the file. ``precision`` and ``int8_arithmetic``: see
    :class:`~anomalib_ext.deploy.inferencer.Inferencer`.
    """
    from anomalib_ext.deploy.inferencer import Inferencer, collect_images

    if batch_size < 1:
        msg = f"batch_size must be at least 1, got {batch_size}"
        raise ValueError(msg)
    inferencer = Inferencer(model_dir, device, num_threads, precision, int8_arithmetic)
    paths = collect_images(inputs, exclude=[output])
    output = prepare_output_folder(output)
    with OutputLock(output):
        results = []
        for index, (path, prediction, error) in enumerate(inferencer.iter_predictions(paths, batch_size)):
            if prediction is not None:
                write_prediction(prediction, output, index)
            results.append(InferenceResult(path, prediction, error))
        write_bytes_atomic(output / SCORES_FILE, scores_csv(results, timing).encode())
    return results
