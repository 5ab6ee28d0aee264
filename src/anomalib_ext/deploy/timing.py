"""Latency (median of repeated runs after warm-up) of OpenVINO IRs and torch models on CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def time_openvino(model_dir: str | Path, batch_sizes: Sequence[int] = (1, 8), repeats: int = 20,
                  num_threads: int | None = None) -> dict[str, float | str]:
    """IR-only latency per batch size (``latency_ms_b{n}``) and throughput (``images_per_s_b{n}``) on random input."""
    from anomalib_ext.deploy.inferencer import Inferencer

    inferencer = Inferencer(model_dir, num_threads=num_threads)
    rng = np.random.default_rng(0)
    result: dict[str, float | str] = {"openvino_precision": inferencer.inference_precision}
    for batch in batch_sizes:
        data = rng.random((batch, 3, *inferencer.input_size), dtype=np.float32)
        ms = median_ms(lambda data=data: inferencer.infer(data), repeats=max(3, repeats // batch))
        result[f"latency_ms_b{batch}"] = ms
        result[f"images_per_s_b{batch}"] = batch * 1000 / ms
    return result
