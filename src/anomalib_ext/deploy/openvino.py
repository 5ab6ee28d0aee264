"""OpenVINO inference on an exported anomalib model: scores, maps, masks, overlays and a CSV.

``anomalib-ext infer --model-dir results/.../weights/openvino --input DIR|FILE|GLOB --output DIR``
"""

from __future__ import annotations

import argparse
import csv
import glob
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from anomalib_ext.data.mvtec_like import IMAGE_EXTENSIONS, read_rgb

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    score: float
    label: bool
    anomaly_map: np.ndarray  # HxW float
    mask: np.ndarray  # HxW bool


def find_model_xml(model_dir: str | Path) -> Path:
    """The IR ``.xml`` in ``model_dir`` (or ``model_dir`` itself when it is the file)."""
    path = Path(model_dir)
    if path.is_file() and path.suffix == ".xml":
        return path
    candidates = sorted(path.glob("*.xml")) if path.is_dir() else []
    if not candidates:
        msg = f"No OpenVINO model (*.xml) in {path}. Export one first: anomalib export --export_type openvino ..."
        raise FileNotFoundError(msg)
    return candidates[0]


def collect_images(inputs: str | Path) -> list[Path]:
    """A file, every image in a folder (recursively), or a glob pattern."""
    path = Path(inputs)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    matches = sorted(Path(p) for p in glob.glob(str(inputs), recursive=True) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
    if not matches:
        raise FileNotFoundError(f"No images found at {inputs} (a file, a folder or a glob pattern).")
    return matches


class OpenVINOAnomalyInferencer:
    """Runs an exported anomalib IR on CPU via anomalib's ``OpenVINOInferencer``.

    For an AMFS export (``amfs.json`` beside the IR) the host steps run around the IR: the image is
    resized to the model's input size and aligned to the saved reference, and the anomaly map and mask
    are warped back into the (resized) input frame.
    """

    def __init__(self, model_dir: str | Path, device: str = "CPU") -> None:
        from anomalib.deploy import OpenVINOInferencer

        self.xml = find_model_xml(model_dir)
        self.inferencer = OpenVINOInferencer(path=self.xml, device=device)
        self.aligner = None
        self.input_size = None
        metadata_path = self.xml.parent / "amfs.json"
        if metadata_path.is_file():
            import dataclasses
            import json

            from anomalib_ext.models.amfs.alignment import BatchAligner
            from anomalib_ext.transforms.align import ORBSettings

            metadata = json.loads(metadata_path.read_text())
            self.input_size = tuple(metadata["input_size"])
            if metadata["align"]:
                reference = read_rgb(self.xml.parent / metadata["reference"])
                fields = {f.name for f in dataclasses.fields(ORBSettings)}
                settings = ORBSettings(**{k: v for k, v in metadata["orb"].items() if k in fields})
                self.aligner = BatchAligner(reference, settings, metadata.get("fill_from_reference", False))

    def predict(self, path: str | Path) -> Prediction:
        image = read_rgb(path).astype(np.float32) / 255  # clear error for unreadable files
        if self.input_size is None:
            result = self.inferencer.predict(image)
        else:
            result = self._predict_aligned(image)
        anomaly_map = _squeeze_map(result.anomaly_map).astype(np.float32)
        mask = _squeeze_map(result.pred_mask) if result.pred_mask is not None else anomaly_map > 0.5
        return Prediction(str(path), float(np.asarray(result.pred_score).ravel()[0]), bool(np.asarray(result.pred_label).ravel()[0]), anomaly_map, mask.astype(bool))

    def _predict_aligned(self, image: np.ndarray):
        """AMFS host steps: resize, align to the reference, run the IR, warp map and mask back."""
        from types import SimpleNamespace

        import torch

        h, w = self.input_size
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        homography = np.eye(3)
        if self.aligner is not None:
            aligned, homographies, _ = self.aligner.align(torch.from_numpy(resized).permute(2, 0, 1)[None])
            resized, homography = aligned[0].permute(1, 2, 0).numpy(), homographies[0]
        result = self.inferencer.predict(np.ascontiguousarray(resized, dtype=np.float32))
        inverse = np.linalg.inv(homography)
        anomaly_map = cv2.warpPerspective(_squeeze_map(result.anomaly_map).astype(np.float32), inverse, (w, h), borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpPerspective(_squeeze_map(result.pred_mask).astype(np.uint8), inverse, (w, h), flags=cv2.INTER_NEAREST)
        return SimpleNamespace(pred_score=result.pred_score, pred_label=result.pred_label, anomaly_map=anomaly_map, pred_mask=mask)


def _squeeze_map(value) -> np.ndarray:
    """One HxW map from anomalib's batch outputs ((1, 1, H, W) maps, (1, H, W, 1) masks)."""
    array = np.squeeze(np.asarray(value))
    if array.ndim != 2:
        raise ValueError(f"Expected one HxW map, got shape {np.asarray(value).shape}")
    return array


def overlay(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image with the anomaly map as a jet heat map and the predicted mask outlined in red."""
    h, w = image.shape[:2]
    heat = cv2.resize(np.clip(anomaly_map, 0, 1).astype(np.float32), (w, h))
    heat = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (0.6 * image + 0.4 * heat).astype(np.uint8)
    contours, _ = cv2.findContours(cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(np.ascontiguousarray(blended), contours, -1, (255, 0, 0), 2)


def write_outputs(predictions: Iterable[Prediction], output: Path) -> Path:
    """Maps (16-bit PNG), masks, overlays and ``scores.csv`` under ``output``."""
    for sub in ("maps", "masks", "overlays"):
        (output / sub).mkdir(parents=True, exist_ok=True)
    csv_path = output / "scores.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "score", "label"])
        for i, p in enumerate(predictions):
            stem = f"{i:05d}_{Path(p.path).stem}"
            cv2.imwrite(str(output / "maps" / f"{stem}.png"), (np.clip(p.anomaly_map, 0, 1) * 65535).astype(np.uint16))
            cv2.imwrite(str(output / "masks" / f"{stem}.png"), p.mask.astype(np.uint8) * 255)
            cv2.imwrite(str(output / "overlays" / f"{stem}.jpg"), overlay(read_rgb(p.path), p.anomaly_map, p.mask)[..., ::-1])
            writer.writerow([p.path, f"{p.score:.6f}", "anomalous" if p.label else "normal"])
    return csv_path


def run_inference(model_dir: str | Path, inputs: str | Path, output: str | Path, device: str = "CPU") -> tuple[list[Prediction], list[str]]:
    """Predict every image; unreadable files are reported and skipped, the rest still run."""
    inferencer = OpenVINOAnomalyInferencer(model_dir, device)
    predictions, errors = [], []
    for path in tqdm(collect_images(inputs), desc="OpenVINO inference", unit="img"):
        try:
            predictions.append(inferencer.predict(path))
        except (OSError, ValueError, RuntimeError) as error:
            errors.append(f"{path}: {error}")
            logger.error("Skipped %s: %s", path, error)
    write_outputs(predictions, Path(output))
    return predictions, errors


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-ext infer``: OpenVINO inference on a file, folder or glob."""
    parser = argparse.ArgumentParser(prog="anomalib-ext infer", description=main.__doc__)
    parser.add_argument("--model-dir", required=True, help="folder with the exported model.xml (or the .xml)")
    parser.add_argument("--input", required=True, help="image file, folder or glob")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--device", default="CPU")
    args = parser.parse_args(argv)
    predictions, errors = run_inference(args.model_dir, args.input, args.output, args.device)
    print(f"{len(predictions)} images -> {args.output}/scores.csv, maps/, masks/, overlays/")
    for error in errors:
        print(f"ERROR {error}")
    return 1 if errors and not predictions else 0
