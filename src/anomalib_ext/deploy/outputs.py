"""What ``anomalib-ext infer`` writes: anomaly maps, binary masks, overlays and a CSV of scores."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from anomalib_ext.data.mvtec_like import read_rgb
from anomalib_ext.deploy.inferencer import Prediction


def overlay(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image with the anomaly map as a jet heat map and the predicted mask outlined in red."""
    h, w = image.shape[:2]
    heat = cv2.resize(np.clip(anomaly_map, 0, 1).astype(np.float32), (w, h))
    heat = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (0.6 * image + 0.4 * heat).astype(np.uint8)
    contours, _ = cv2.findContours(cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(np.ascontiguousarray(blended), contours, -1, (255, 0, 0), 2)


def write_outputs(predictions: Iterable[Prediction], output: Path, timing: bool = False) -> Path:
    """Maps (16-bit PNG, normalised map x 65535), masks, overlays and ``scores.csv`` under ``output``."""
    output = Path(output)
    for sub in ("maps", "masks", "overlays"):
        (output / sub).mkdir(parents=True, exist_ok=True)
    csv_path = output / "scores.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "score", "label"] + (["time_ms"] if timing else []))
        for i, p in enumerate(predictions):
            stem = f"{i:05d}_{Path(p.path).stem}"  # the index keeps same-named files from different folders apart
            cv2.imwrite(str(output / "maps" / f"{stem}.png"), (np.clip(p.anomaly_map, 0, 1) * 65535).astype(np.uint16))
            cv2.imwrite(str(output / "masks" / f"{stem}.png"), p.mask.astype(np.uint8) * 255)
            cv2.imwrite(str(output / "overlays" / f"{stem}.jpg"), overlay(read_rgb(p.path), p.anomaly_map, p.mask)[..., ::-1])
            row = [p.path, f"{p.score:.6f}", "anomalous" if p.label else "normal"]
            writer.writerow(row + ([f"{p.time_ms:.2f}"] if timing else []))
    return csv_path


def run_inference(model_dir: str | Path, inputs, output: str | Path, device: str = "CPU", batch_size: int = 8,
                  timing: bool = False, num_threads: int | None = None) -> tuple[list[Prediction], list[str]]:
    """Predict every image of a file/folder/glob and write the outputs; unusable files are reported and skipped."""
    from anomalib_ext.deploy.inferencer import Inferencer, collect_images

    inferencer = Inferencer(model_dir, device, num_threads)
    predictions, errors = inferencer.predict_paths(collect_images(inputs), batch_size=batch_size)
    write_outputs(predictions, Path(output), timing=timing)
    return predictions, errors
