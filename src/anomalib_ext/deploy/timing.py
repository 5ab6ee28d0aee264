"""Latency (median of repeated runs after warm-up) of OpenVINO IRs and torch models on CPU."""

from __future__ import annotations

import logging
import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

logger = logging.getLogger(__name__)


def _batch8_error(run: Callable[[], object]) -> str:
    """'' if ``run`` (one batch-8 inference) works, else the first line of OpenVINO's error."""
    try:
        run()
    except RuntimeError as error:
        return str(error).strip().splitlines()[0][:200]
    return ""


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def compare_openvino(
    folders: dict[str, str | Path],
    images: Sequence[np.ndarray],
    *,
    repeats: int = 20,
    num_threads: int | None = None,
    int8_arithmetic: str = "auto",
) -> dict[str, dict[str, float | str]]:
    """Latencies of several exports (e.g. FP32 and INT8) measured **interleaved**.

    A slow spell of a shared machine then hits all of them alike (their ratio is what matters).

    Per export: ``latency_ms_b1`` (IR call, batch 1), ``e2e_ms`` (one RGB image through host steps + IR +
    warp back), ``images_per_s_b8`` (IR, batch 8), ``openvino_precision``. ``images``: at least 8 RGB
    images (H, W, 3) of the test set (fewer are repeated). Each is the median over rounds after 3 warm-up rounds.
    ``int8_arithmetic``: see :class:`~anomalib_ext.deploy.inferencer.Inferencer`.
    """
    from anomalib_ext.deploy.inferencer import Inferencer

    if not images:
        msg = "compare_openvino needs at least one image"
        raise ValueError(msg)
    images = (list(images) * 8)[:8]  # batch 8 from fewer images: repeat them
    inferencers = {
        name: Inferencer(folder, num_threads=num_threads, int8_arithmetic=int8_arithmetic)
        for name, folder in folders.items()
    }
    batches = {name: np.stack([inf.prepare(image)[0] for image in images[:8]]) for name, inf in inferencers.items()}
    tasks = {}
    for name, inf in inferencers.items():
        batch = batches[name]
        tasks[name, "latency_ms_b1"] = lambda inf=inf, batch=batch: inf.infer(batch[:1])
        tasks[name, "e2e_ms"] = lambda inf=inf: inf.predict_arrays(images[:1])
        tasks[name, "batch8_ms"] = lambda inf=inf, batch=batch: inf.infer(batch)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in tasks}

    def interleaved(keys: list[tuple[str, str]], rounds: int) -> None:
        for round_index in range(3 + rounds):  # 3 warm-up rounds
            for key in keys if round_index % 2 == 0 else keys[::-1]:
                start = time.perf_counter()
                tasks[key]()
                if round_index >= 3:
                    times[key].append((time.perf_counter() - start) * 1000)

    interleaved([key for key in tasks if key[1] != "batch8_ms"], repeats)
    # Some IRs cannot be reshaped to batch 8 (anomalib's Patchcore export at 512 px keeps a traced batch
    # size in a Reshape): report why instead of losing the batch-1 numbers already measured.
    batch8_errors = {}
    for name in inferencers:
        error = _batch8_error(tasks[name, "batch8_ms"])
        if error:
            batch8_errors[name] = error
            logger.warning("%s: batch-8 timing skipped, the IR does not run at batch 8: %s", name, error)
    interleaved(
        [key for key in tasks if key[1] == "batch8_ms" and key[0] not in batch8_errors],
        max(3, repeats // 8),  # 8x the work each
    )
    result = {}
    for name, inf in inferencers.items():
        result[name] = {
            "latency_ms_b1": statistics.median(times[name, "latency_ms_b1"]),
            "e2e_ms": statistics.median(times[name, "e2e_ms"]),
            "openvino_precision": inf.inference_precision.replace("<Type: '", "").replace("'>", ""),
        }
        if name in batch8_errors:
            result[name]["batch8_error"] = batch8_errors[name]
        else:
            result[name]["images_per_s_b8"] = 8000 / statistics.median(times[name, "batch8_ms"])
    return result
