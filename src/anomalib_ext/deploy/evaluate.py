"""Accuracy of an exported model (FP32 or INT8) on an MVTec-like test split, and FP32-vs-INT8 comparisons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch

from anomalib_ext.data.mvtec_like import make_mvtec_like_samples, read_binary_mask
from anomalib_ext.deploy.inferencer import Inferencer, Prediction

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def _test_table(test_set: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(test_set, pd.DataFrame):
        test = test_set.reset_index(drop=True)
    else:
        samples = make_mvtec_like_samples(test_set)
        test = samples[samples.split == "test"].reset_index(drop=True)
    return test.assign(mask_path=test.mask_path.fillna("").astype(str))


def _metrics(predictions: Sequence[Prediction], test: pd.DataFrame, input_size: tuple[int, int]) -> dict[str, float]:
    from torchmetrics.functional.classification import binary_auroc

    scores = torch.tensor([p.score for p in predictions])
    labels = torch.tensor(test.label_index.to_numpy())
    result = {"image_AUROC": float(binary_auroc(scores, labels))}
    if (test.mask_path != "").any():
        height, width = input_size
        maps, masks = [], []
        for prediction, mask_path in zip(predictions, test.mask_path, strict=True):
            mask = np.zeros((height, width), bool)
            if mask_path:
                mask = (
                    cv2.resize(
                        read_binary_mask(mask_path).astype(np.uint8),
                        (width, height),
                        interpolation=cv2.INTER_NEAREST,
                    )
                    > 0
                )
            maps.append(torch.from_numpy(prediction.anomaly_map).ravel())
            masks.append(torch.from_numpy(mask).ravel())
        result["pixel_AUROC"] = float(binary_auroc(torch.cat(maps), torch.cat(masks).long()))
    return result


def _predict_test_set(
    model_dir: str | Path,
    test: pd.DataFrame,
    *,
    batch_size: int,
    progress: bool,
    num_threads: int | None,
    int8_arithmetic: str,
) -> tuple[list[Prediction], Inferencer]:
    inferencer = Inferencer(model_dir, num_threads=num_threads, int8_arithmetic=int8_arithmetic)
    predictions, errors = inferencer.predict_paths(test.image_path.tolist(), batch_size=batch_size, progress=progress)
    if errors:
        msg = f"{len(errors)} test images could not be scored, e.g. {errors[0]}"
        raise RuntimeError(msg)
    return predictions, inferencer


def evaluate_openvino(
    model_dir: str | Path,
    test_set: str | Path | pd.DataFrame,
    *,
    batch_size: int = 8,
    progress: bool = True,
    num_threads: int | None = None,
    int8_arithmetic: str = "auto",
) -> dict[str, float]:
    """``image_AUROC`` (and ``pixel_AUROC`` when the set has masks) of the IR at ``model_dir``.

    Args:
        model_dir: an export folder (FP32 or INT8).
        test_set: an MVTec-like category folder (its ``test`` split), or a samples table with anomalib's
            columns ``image_path, mask_path, label_index`` (e.g. ``datamodule.test_data.samples``, which
            honours subsets such as ``defect_types=["letter"]``).
        batch_size: images per IR call.
        progress: show a progress bar.
        num_threads: OpenVINO threads (``None``: all cores).
        int8_arithmetic: see :class:`~anomalib_ext.deploy.inferencer.Inferencer`.

    Masks are resized (nearest) to the model's input size, the frame the maps come back in — the same
    frame anomalib's evaluator scores the torch model in.
    """
    test = _test_table(test_set)
    predictions, inferencer = _predict_test_set(
        model_dir,
        test,
        batch_size=batch_size,
        progress=progress,
        num_threads=num_threads,
        int8_arithmetic=int8_arithmetic,
    )
    return _metrics(predictions, test, inferencer.input_size)


def agreement(reference: Sequence[Prediction], other: Sequence[Prediction]) -> dict[str, float]:
    """How closely ``other``'s maps and scores follow ``reference``'s (e.g. INT8 against FP32).

    ``map_correlation_mean`` / ``_min``: Pearson correlation of each image's two maps (images whose map is
    constant in either are left out); ``score_correlation``: of the image scores; ``score_change_max``:
    the largest change of a normalised score.
    """
    correlations = []
    for a, b in zip(reference, other, strict=True):
        x, y = a.anomaly_map.ravel().astype(np.float64), b.anomaly_map.ravel().astype(np.float64)
        if x.std() > 0 and y.std() > 0:
            correlations.append(float(np.corrcoef(x, y)[0, 1]))
    scores = np.array([[a.score, b.score] for a, b in zip(reference, other, strict=True)])
    return {
        "map_correlation_mean": float(np.mean(correlations)) if correlations else float("nan"),
        "map_correlation_min": float(np.min(correlations)) if correlations else float("nan"),
        "score_correlation": float(np.corrcoef(scores.T)[0, 1]) if len(scores) > 1 else float("nan"),
        "score_change_max": float(np.abs(scores[:, 1] - scores[:, 0]).max()),
    }


def compare_exports(
    folders: dict[str, str | Path],
    test_set: str | Path | pd.DataFrame,
    images: Sequence[np.ndarray],
    *,
    accuracy: bool = True,
    timing: bool = True,
    repeats: int = 20,
    simulate_int8: bool = False,
    int8_arithmetic: str = "auto",
) -> dict[str, Any]:
    """Accuracy and interleaved latencies of several exports of one model, e.g. ``{"FP32": ..., "INT8": ...}``.

    See :func:`evaluate_openvino` and :func:`~anomalib_ext.deploy.timing.compare_openvino`.

    Returns ``{name: {image_AUROC, pixel_AUROC, int8_arithmetic, latency_ms_b1, e2e_ms, images_per_s_b8,
    openvino_precision}}``, the CPU it ran on (``measured_on``) and, when both ``FP32`` and ``INT8`` are
    given, the ``image_AUROC_change``, INT8's :func:`agreement` with FP32 and INT8's speed-ups. With
    ``simulate_int8`` the INT8 export is scored a second time with its quantisation simulated in f32
    (``INT8_simulated``: what a CPU with VNNI computes), for accuracy only. ``int8_arithmetic``: how the
    exports run otherwise (see :class:`~anomalib_ext.deploy.inferencer.Inferencer`).
    """
    from anomalib_ext.deploy.cpu import cpu_report
    from anomalib_ext.deploy.timing import compare_openvino

    report: dict[str, Any] = {name: {} for name in folders}
    if timing:
        for name, values in compare_openvino(folders, images, repeats=repeats, int8_arithmetic=int8_arithmetic).items():
            report[name].update(values)
    if accuracy:
        test = _test_table(test_set)
        runs = {name: (folder, int8_arithmetic) for name, folder in folders.items()}
        if simulate_int8 and "INT8" in folders:
            runs["INT8_simulated"] = (folders["INT8"], "simulated")
        predictions = {}
        for name, (folder, arithmetic) in runs.items():
            predictions[name], inferencer = _predict_test_set(
                folder,
                test,
                batch_size=8,
                progress=False,
                num_threads=None,
                int8_arithmetic=arithmetic,
            )
            report.setdefault(name, {}).update(_metrics(predictions[name], test, inferencer.input_size))
            report[name]["int8_arithmetic"] = inferencer.int8_arithmetic
            if name != "FP32" and "FP32" in predictions:
                report[name].update(agreement(predictions["FP32"], predictions[name]))
    if {"FP32", "INT8"} <= set(report):
        fp32, int8 = report["FP32"], report["INT8"]
        if accuracy:
            report["image_AUROC_change"] = int8["image_AUROC"] - fp32["image_AUROC"]
        if timing:
            report["speedup_batch1"] = fp32["latency_ms_b1"] / int8["latency_ms_b1"]
            if "images_per_s_b8" in int8 and "images_per_s_b8" in fp32:
                report["speedup_batch8"] = int8["images_per_s_b8"] / fp32["images_per_s_b8"]
    report["measured_on"] = cpu_report()
    return report
