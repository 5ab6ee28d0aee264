"""The export's batch check (anomalib_ext.ir_batch) on small hand-made OpenVINO graphs, and the CPU facts."""

from __future__ import annotations

import numpy as np
import pytest

SIZE = (8, 12)


def _graph(kind: str):
    """A (?, 3, H, W) -> (score, map) graph: ``good``, one whose Reshape keeps batch 1, or one that mixes images."""
    import openvino as ov
    import openvino.opset13 as ops

    images = ops.parameter([-1, 3, *SIZE], np.float32)
    grey = ops.reduce_mean(images, ops.constant(np.array([1], np.int64)), keep_dims=True)  # (?, 1, H, W)
    if kind == "mixes":  # subtracts the batch mean: runs at any batch, but an image's result depends on the others
        grey = ops.subtract(grey, ops.reduce_mean(grey, ops.constant(np.array([0], np.int64)), keep_dims=True))
    score = ops.reduce_max(grey, ops.constant(np.array([1, 2, 3], np.int64)), keep_dims=False)
    if kind == "traced_batch":  # the trace's batch kept as a constant, as anomalib's chunked Patchcore search did
        grey = ops.reshape(
            ops.reshape(grey, ops.constant(np.array([1, SIZE[0] * SIZE[1]], np.int64)), False),
            ops.constant(np.array([-1, 1, *SIZE], np.int64)),
            False,
        )
    return ov.Model([score, grey], [images])


def test_a_graph_with_a_dynamic_batch_passes():
    from anomalib_ext.ir_batch import supported_batch

    assert supported_batch(_graph("good"), SIZE) == ("dynamic", "")


@pytest.mark.parametrize(("kind", "reason"), [("traced_batch", "does not run at batch 3"), ("mixes", "differ")])
def test_a_graph_that_keeps_the_traced_batch_falls_back_to_batch_1(kind, reason):
    from anomalib_ext.ir_batch import supported_batch

    batch, why = supported_batch(_graph(kind), SIZE)
    assert batch == 1
    assert reason in why


def test_a_static_batch_is_reported_as_it_is():
    from anomalib_ext.ir_batch import supported_batch

    model = _graph("good")
    model.reshape({0: [2, 3, *SIZE]})
    batch, why = supported_batch(model, SIZE)
    assert batch == 2 and "fixed batch of 2" in why


def test_the_cpu_report_names_the_int8_kernel():
    from anomalib_ext.deploy.cpu import cpu_report, describe, has_int8_dot_product, int8_kernel

    report = cpu_report()
    kernel = int8_kernel()
    assert report["int8_kernel"] == kernel and kernel != "none"  # every x86 CPU OpenVINO supports runs INT8
    assert has_int8_dot_product() == any(part in kernel.lower() for part in ("vnni", "amx"))
    assert report["cpu"] in describe(report) and kernel in describe(report)
