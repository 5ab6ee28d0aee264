"""Batched OpenVINO inference on an ``anomalib-ext export`` folder, with the model's host-side steps.

    inferencer = Inferencer("export/openvino")          # model.xml + metadata.json (+ host-step files)
    predictions, errors = inferencer.predict_paths(collect_images("images/"), batch_size=8)

Per image: read (RGB) -> resize to the model's input size -> host steps ``prepare`` (named in
``metadata.json`` and rebuilt by :func:`anomalib_ext.host_steps.load_host_steps`; AMFS: align to the
saved reference) -> batched IR -> host steps ``restore`` (maps back into the resized input frame) ->
mask at the model's threshold (0.5 on the normalised map, as in anomalib's post-processor). A file
that cannot be used gives an error naming it; the rest of the batch still runs.
"""

from __future__ import annotations

import functools
import glob
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from anomalib_ext.data.mvtec_like import IMAGE_EXTENSIONS, read_rgb, resize_like_preprocessor, unusual_shape
from anomalib_ext.deploy.cpu import SIMULATE_INT8, has_int8_dot_product, int8_kernel
from anomalib_ext.deploy.folders import is_output_folder
from anomalib_ext.errors import AnomalibExtError
from anomalib_ext.export_format import OUTPUT_NAMES, ModelFilesError, read_metadata
from anomalib_ext.host_steps import load_host_steps

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    import openvino as ov

logger = logging.getLogger(__name__)
NORMALIZED_THRESHOLD = 0.5


@dataclass
class Prediction:
    """One image's result: normalised score and label, map and mask in the resized input frame."""

    path: str
    score: float  # normalised: > 0.5 is anomalous
    label: bool
    anomaly_map: np.ndarray  # (H, W) float32 in the resized input frame
    mask: np.ndarray  # (H, W) bool
    time_ms: float | None = None  # host steps of this image + its share of the batch's IR call


class NoImagesError(AnomalibExtError, FileNotFoundError):
    """An input file, folder or glob with no images."""


def _outside_outputs(found: Sequence[Path], exclude: Sequence[Path]) -> list[Path]:
    """The files of ``found`` outside ``exclude`` and outside folders ``anomalib-ext infer`` wrote.

    Earlier results are never read back as inputs; decided once per folder, not once per file.
    """

    @functools.cache
    def excluded(folder: Path) -> bool:
        resolved = folder.resolve()
        if any(e == resolved or e in resolved.parents for e in exclude) or is_output_folder(folder):
            return True
        return folder.parent != folder and excluded(folder.parent)

    return [p for p in found if p.is_file() and not excluded(p.parent)]


def collect_images(inputs: str | Path | Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> list[Path]:
    """A file, every image in a folder (recursively), a glob pattern, or a list of these.

    Searches (folders, globs) skip ``exclude`` (e.g. the run's own output folder) and every folder
    an earlier ``anomalib-ext infer`` wrote, so results are never read back as inputs. A file named
    explicitly is always taken; a file found twice is listed once.
    """
    exclude = [Path(e).resolve() for e in exclude]
    if isinstance(inputs, (list, tuple)):  # a file named twice (a folder and a glob) is predicted once
        return list(dict.fromkeys(p for item in inputs for p in collect_images(item, exclude)))
    path = Path(inputs)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        found = sorted(
            Path(p)
            for p in glob.glob(str(inputs), recursive=True)  # ruff: ignore[glob] - a user pattern, absolute or relative
            if Path(p).suffix.lower() in IMAGE_EXTENSIONS
        )
    found = _outside_outputs(found, exclude)
    if not found:
        msg = f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found at {inputs}: give a file, a folder or a glob."
        raise NoImagesError(
            msg,
        )
    return found


def resolve_model_dir(model_dir: str | Path) -> tuple[Path, Path]:
    """``(folder, model.xml)`` from an export folder or its ``.xml``; clear errors for missing files."""
    path = Path(model_dir)
    xml = path if path.suffix.lower() == ".xml" else path / "model.xml"
    folder = xml.parent
    if not folder.is_dir():
        msg = f"Model folder {folder} does not exist. Export a model first: anomalib-ext export --help"
        raise ModelFilesError(msg)
    for needed in (xml, xml.with_suffix(".bin")):
        if not needed.is_file():
            msg = f"{needed} is missing from the export folder {folder}: export the model again (anomalib-ext export)."
            raise ModelFilesError(
                msg,
            )
    return folder, xml


def read_ir(core: ov.Core, xml: Path) -> ov.Model:
    """``core.read_model`` with a clear error for a damaged IR (a truncated ``model.bin``, an edited ``.xml``)."""
    try:
        return core.read_model(str(xml))
    except RuntimeError as error:
        reason = next((line.strip() for line in reversed(str(error).splitlines()) if line.strip()), "unreadable")
        msg = (
            f"{xml} with {xml.with_suffix('.bin').name} cannot be read ({reason}): the export is "
            "damaged or incomplete. Export the model again (anomalib-ext export)."
        )
        raise ModelFilesError(
            msg,
        ) from error


def check_image(image: np.ndarray, name: str) -> np.ndarray:
    """An (H, W, 3) uint8/float RGB image, or a ValueError naming the image and the fix."""
    if image.ndim != 3 or image.shape[2] != 3:
        msg = (
            f"{name}: expected an RGB image of shape (H, W, 3), got {image.shape}. Convert it to RGB first "
            "(files read from disk are converted: grey and RGBA are fine)."
        )
        raise ValueError(
            msg,
        )
    return image


class Inferencer:
    """Runs an exported model on CPU (or another OpenVINO device) in batches.

    Args:
        model_dir: the export folder (``model.xml``, ``model.bin``, ``metadata.json``) or its ``.xml``.
        device: OpenVINO device.
        num_threads: OpenVINO inference threads (``None``: OpenVINO's default, all cores).
        precision: floating-point precision of the run. ``f32`` (default) gives the scores the model was
            evaluated with. ``auto`` is OpenVINO's choice, which is bf16 on CPUs with AMX or AVX512-BF16:
            faster there, but on such a CPU it moved AMFS's normalised image scores by up to 0.09 (0.783
            -> 0.872 on tiny SyntheticGPD), enough to flip labels near the threshold. ``bf16`` forces it.
            INT8 exports run their quantised convolutions in INT8 either way.
        int8_arithmetic: how an INT8 export's quantised layers run. ``native``: OpenVINO's INT8 kernels.
            ``simulated``: quantise-dequantise in f32, the exact arithmetic of a CPU with VNNI on any CPU
            (slower than FP32; for checks). ``auto`` (default): native, except for an export quantised for
            VNNI CPUs only (``quantize --target vnni``, or older exports) on a CPU whose INT8
            convolutions saturate (no VNNI/AMX): there its maps would be wrong, so it is simulated and a
            warning says to quantise again with ``--target any``. See :mod:`anomalib_ext.deploy.cpu`.
    """

    PRECISIONS = ("f32", "bf16", "auto")
    INT8_ARITHMETICS = ("auto", "native", "simulated")

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "CPU",
        num_threads: int | None = None,
        precision: str = "f32",
        int8_arithmetic: str = "auto",
    ) -> None:
        import openvino as ov

        self.folder, self.xml = resolve_model_dir(model_dir)
        self.metadata = read_metadata(self.folder)
        self.input_size = tuple(self.metadata["input"]["size"])
        self.device = device
        if precision not in self.PRECISIONS:
            msg = f"precision must be one of {self.PRECISIONS}, got {precision!r}"
            raise ValueError(msg)
        self.config = {"INFERENCE_NUM_THREADS": int(num_threads)} if num_threads else {}
        if precision != "auto":
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self.int8_arithmetic = self._int8_arithmetic(int8_arithmetic)
        if self.int8_arithmetic == "simulated":
            self.config.update(SIMULATE_INT8)
        self.core = ov.Core()
        self.model = read_ir(self.core, self.xml)
        batch = self.metadata["input"].get("batch", "dynamic")
        # An IR that keeps a fixed batch (see anomalib_ext.ir_batch) runs any batch that many images at a time.
        self.fixed_batch: int | None = None if batch == "dynamic" else int(batch)
        self._requests: dict[int, object] = {}  # batch size -> infer request of a static-shape compile
        self.host_steps = load_host_steps(self.folder, self.metadata.get("host_steps"))

    def _int8_arithmetic(self, requested: str) -> str:
        """``native`` or ``simulated`` (see the class docstring); ``native`` for FP32 exports."""
        if requested not in self.INT8_ARITHMETICS:
            msg = f"int8_arithmetic must be one of {self.INT8_ARITHMETICS}, got {requested!r}"
            raise ValueError(msg)
        if self.metadata["precision"] != "INT8" or not self.device.upper().startswith("CPU"):
            return "native"
        if requested != "auto":
            return requested
        # Exports written before the target was recorded used NNCF's default: 8-bit weights (VNNI only).
        target = self.metadata.get("quantization", {}).get("target_cpu", "vnni")
        if target == "vnni" and not has_int8_dot_product(self.device):
            logger.warning(
                "%s was quantised for CPUs with VNNI/AMX (8-bit weights); this CPU's INT8 convolutions (%s) "
                "saturate, so its INT8 layers are simulated in f32 (correct, slower than FP32). Quantise the "
                "FP32 export again with `anomalib-ext quantize --target any` for an INT8 model that runs here.",
                self.folder,
                int8_kernel(self.device),
            )
            return "simulated"
        return "native"

    def _request(self, batch_size: int) -> ov.InferRequest:
        """An infer request for ``batch_size``: each batch size is compiled once with static shapes.

        The IR has a dynamic batch; measured at 256 px on 2 cores, static compiles are 25-35% faster than
        running the dynamic one (per-call shape inference).
        """
        if batch_size not in self._requests:
            model = self.model.clone()
            if self.fixed_batch is None:
                model.reshape({0: [batch_size, 3, *self.input_size]})
            self._requests[batch_size] = self.core.compile_model(model, self.device, self.config).create_infer_request()
        return self._requests[batch_size]

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO picked for this device (e.g. f32, bf16)."""
        return str(self._request(self.fixed_batch or 1).get_compiled_model().get_property("INFERENCE_PRECISION_HINT"))

    # ---- one image -> model input ---------------------------------------------------------------
    def prepare(self, image: np.ndarray, name: str = "image") -> tuple[np.ndarray, tuple]:
        """(3, H, W) float32 model input in [0, 1] and the image's host-step state (for :meth:`restore`)."""
        image = check_image(np.asarray(image), name)
        warning = unusual_shape(name, image.shape[:2], self.input_size)
        if warning:
            logger.warning(warning)
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        tensor, states = self.host_steps.prepare(resize_like_preprocessor(tensor, self.input_size))
        return tensor[0].numpy(), states[0]

    # ---- batches --------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw IR outputs for a (B, 3, H, W) float32 batch, by output name.

        An IR with a fixed batch runs the images that many at a time (the last group padded by repeating
        its last image, whose outputs are dropped).
        """
        if self.fixed_batch is None or len(batch) == self.fixed_batch:
            return self._infer(batch)
        size = self.fixed_batch
        parts = []
        for first in range(0, len(batch), size):
            group = batch[first : first + size]
            count = len(group)
            padded = np.concatenate([group, np.repeat(group[-1:], size - count, axis=0)]) if count < size else group
            parts.append({name: value[:count] for name, value in self._infer(padded).items()})
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        result = self._request(len(batch)).infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        outputs = {}
        for index, (port, value) in enumerate(result.items()):
            # A port can carry several tensor names (anomalib's ONNX route adds its own); ours are
            # anomalib's four output names, in anomalib's order.
            known = port.get_names() & set(OUTPUT_NAMES)
            outputs[known.pop() if known else OUTPUT_NAMES[index]] = np.asarray(value)
        return outputs

    def predict_arrays(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Prediction]:
        """Predictions for in-memory RGB images (one IR call for the whole list)."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        prepared, host_ms = [], []
        for image, name in zip(images, names, strict=True):
            start = time.perf_counter()
            prepared.append(self.prepare(image, name))
            host_ms.append((time.perf_counter() - start) * 1000)  # the host-step share of Prediction.time_ms
        return self._predict_prepared(prepared, names, host_ms)

    def _predict_prepared(
        self,
        prepared: Sequence[tuple[np.ndarray, tuple]],
        names: Sequence[str],
        host_ms: Sequence[float],
    ) -> list[Prediction]:
        start = time.perf_counter()
        outputs = self.infer(np.stack([p[0] for p in prepared]))
        maps = torch.from_numpy(outputs["anomaly_map"].reshape(len(prepared), 1, *self.input_size).astype(np.float32))
        maps = self.host_steps.restore(maps, [p[1] for p in prepared])  # no steps: the maps as they are
        ir_ms = (time.perf_counter() - start) * 1000 / len(prepared)
        scores = outputs["pred_score"].reshape(len(prepared))
        return [
            Prediction(
                str(name),
                float(score),
                bool(score > NORMALIZED_THRESHOLD),
                m[0].numpy(),
                m[0].numpy() > NORMALIZED_THRESHOLD,
                host + ir_ms,
            )
            for name, score, m, host in zip(names, scores, maps, host_ms, strict=True)
        ]

    def iter_predictions(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 8,
        progress: bool = True,
    ) -> Iterator[tuple[str, Prediction | None, str | None]]:
        """``(path, prediction, None)`` or ``(path, None, error)`` for every path, in input order, batch by batch.

        A file that cannot be read or used gives an error naming it; the rest of its batch still runs.
        """
        if batch_size < 1:
            msg = f"batch_size must be at least 1, got {batch_size}"
            raise ValueError(msg)
        paths = [str(p) for p in paths]
        bar = tqdm(total=len(paths), desc="OpenVINO inference", unit="img", disable=not progress)
        for first in range(0, len(paths), batch_size):
            chunk = paths[first : first + batch_size]
            prepared, names, host_ms, errors = [], [], [], {}
            for path in chunk:
                start = time.perf_counter()
                try:
                    item = self.prepare(read_rgb(path), path)
                except (OSError, ValueError) as error:
                    errors[path] = str(error)
                    logger.error("Skipped %s: %s", path, error)  # ruff: ignore[error-instead-of-exception] - one line per file, no traceback
                    continue
                prepared.append(item)
                names.append(path)
                host_ms.append((time.perf_counter() - start) * 1000)  # reading the file included
            done = dict(zip(names, self._predict_prepared(prepared, names, host_ms), strict=True)) if prepared else {}
            for path in chunk:
                yield path, done.get(path), errors.get(path)
            bar.update(len(chunk))
        bar.close()

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 8,
        progress: bool = True,
    ) -> tuple[list[Prediction], list[str]]:
        """Predict every file; each file that cannot be read or used is reported in ``errors`` and skipped."""
        predictions, errors = [], []
        for path, prediction, error in self.iter_predictions(paths, batch_size, progress):
            if prediction is not None:
                predictions.append(prediction)
            else:
                errors.append(f"{path}: {error}")
        return predictions, errors
