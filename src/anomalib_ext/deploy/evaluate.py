"""Accuracy of an exported model (FP32 or INT8) on an MVTec-like test split, and FP32-vs-INT8 comparisons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch

from anomalib_ext.data.mvtec_like import make_mvtec_like_samples, read_binary_mask
from anomalib_ext.deploy.inferencer import Inferencer

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def evaluate_openvino(
    model_dir: str | Path,
    test_set: str | Path | pd.DataFrame,
    *,
    batch_size: int = 8,
    progress: bool = True,
    num_threads: int | None = None,
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

    Masks are resized (nearest) to the model's input size, the frame the maps come back in — the same
    frame anomalib's evaluator scores the torch model in.
    """
    from torchmetrics.functional.classification import binary_auroc

    if isinstance(test_set, pd.DataFrame):
        test = test_set.reset_index(drop=True)
    else:
        samples = make_mvtec_like_samples(test_set)
        test = samples[samples.split == "test"].reset_index(drop=True)
    test = test.assign(mask_path=test.mask_path.fillna("").astype(str))
    inferencer = Inferencer(model_dir, num_threads=num_threads)
    predictions, errors = inferencer.predict_paths(test.image_path.tolist(), batch_size=batch_size, progress=progress)
    if errors:
        msg = f"{len(errors)} test images could not be scored, e.g. {errors[0]}"
        raise RuntimeError(msg)
    scores = torch.tensor([p.score for p in predictions])
    labels = torch.tensor(test.label_index.to_numpy())
    result = {"image_AUROC": float(binary_auroc(scores, labels))}
    if (test.mask_path != "").any():
        height, width = inferencer.input_size
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


def compare_exports(
    folders: dict[str, str | Path],
    test_set: str | Path | pd.DataFrame,
    images: Sequence[np.ndarray],
    *,
    accuracy: bool = True,
    timing: bool = True,
    repeats: int = 20,
) -> dict[str, Any]:
    """Accuracy and interleaved latencies of several exports of one model, e.g. ``{"FP32": ..., "INT8": ...}``.

    See :func:`evaluate_openvino` and :func:`~anomalib_ext.deploy.timing.compare_openvino`.

    Returns ``{name: {image_AUROC, pixel_AUROC, latency_ms_b1, e2e_ms, images_per_s_b8, openvino_precision}}``
    and, when both ``FP32`` and ``INT8`` are given, the ``image_AUROC_change`` and speed-ups of INT8.
    """
    from anomalib_ext.deploy.timing import compare_openvino

    report: dict[str, Any] = {name: {} for name in folders}
    if timing:
        for name, values in compare_openvino(folders, images, repeats=repeats).items():
            report[name].update(values)
    if accuracy:
        for name, folder in folders.items():
            report[name].update(evaluate_openvino(folder, test_set, progress=False))
    if {"FP32", "INT8"} <= set(report):
        fp32, int8 = report["FP32"], report["INT8"]
        if accuracy:
            report["image_AUROC_change"] = int8["image_AUROC"] - fp32["image_AUROC"]
        if timing:
            report["speedup_batch1"] = fp32["latency_ms_b1"] / int8["latency_ms_b1"]
            if "images_per_s_b8" in int8 and "images_per_s_b8" in fp32:
                report["speedup_batch8"] = int8["images_per_s_b8"] / fp32["images_per_s_b8"]
    return report
