"""What this CPU does with an INT8 export: the facts quantisation records and tests print in their header.

Why it matters: an INT8 convolution multiplies u8 activations by s8 weights. CPUs with VNNI
(AVX512-VNNI, AVX-VNNI) or AMX accumulate those products in 32 bits. CPUs without (AVX2 only: older
Intel Core, Atom, AMD before Zen 4; AVX-512 without VNNI: Skylake-SP) go through ``vpmaddubsw``, which
adds pairs of products into a *saturating 16-bit* integer: 2 x 255 x 127 = 64,770 overflows 32,767, so
full 8-bit weights give wrong activations there. 7-bit weights (NNCF's overflow fix) keep every pair
below 2 x 255 x 64 = 32,640 and are safe on all of them.

Which kernel OpenVINO picks is read from OpenVINO itself (:func:`int8_kernel`: one quantised convolution
compiled, ~0.4 s, once per process), not guessed from the CPU's name; ``/proc/cpuinfo`` flags are
reported beside it where the OS has them.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

# cpuinfo flags that decide how OpenVINO runs INT8 and bf16 (reported, not used for decisions).
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# Kernel-name parts of an INT8 convolution that accumulates in 32 bits (no 16-bit saturation).
DOT_PRODUCT_KERNELS = ("vnni", "amx")
# OpenVINO CPU property that turns its low-precision transformations off: an INT8 IR then runs its
# quantise-dequantise pairs in f32 ("simulated"), the exact arithmetic of a VNNI CPU on any CPU.
SIMULATE_INT8 = {"LP_TRANSFORMS_MODE": "NO"}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's own string)."""
    info = _proc_cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine()


@functools.cache
def _proc_cpuinfo() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() and key.strip() not in fields:  # the first processor's entry
            fields[key.strip()] = value.strip()
    return fields


def isa_flags() -> list[str] | None:
    """Which of :data:`ISA_FLAGS` the CPU has (``None`` where the OS does not say: not Linux)."""
    flags = _proc_cpuinfo().get("flags")
    if flags is None:
        return None
    have = set(flags.split())
    return [flag for flag in ISA_FLAGS if flag in have]


@functools.cache
def int8_kernel(device: str = "CPU") -> str:
    """The primitive OpenVINO runs an INT8 convolution with on ``device`` (e.g. ``jit_avx2_I8``).

    Compiles one tiny quantised convolution (FakeQuantize on u8 activations, i8 weights) and reads the
    compiled graph's ``primitiveType``. ``"none"`` when the device runs it in another precision.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    channels = 8
    image = ops.parameter([1, channels, 8, 8], np.float32)
    low, high = ops.constant(np.float32(0)), ops.constant(np.float32(1))
    activations = ops.fake_quantize(image, low, high, low, high, 256)
    weights = ops.multiply(
        ops.convert(ops.constant(np.ones((channels, channels, 3, 3), np.int8)), np.float32),
        ops.constant(np.full((channels, 1, 1, 1), 0.01, np.float32)),
    )
    convolution = ops.convolution(activations, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    compiled = ov.Core().compile_model(ov.Model([convolution], [image]), device, {"INFERENCE_PRECISION_HINT": "f32"})
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            kernel = info["primitiveType"].astype(str)
            return kernel if info["runtimePrecision"].astype(str) in {"u8", "i8"} else "none"
    return "none"


def has_int8_dot_product(device: str = "CPU") -> bool:
    """Whether OpenVINO's INT8 convolutions here accumulate in 32 bits (VNNI/AMX): full 8-bit weights are safe."""
    kernel = int8_kernel(device).lower()
    return any(part in kernel for part in DOT_PRODUCT_KERNELS)


def cpu_report(device: str = "CPU") -> dict[str, Any]:
    """CPU model, cores, ISA flags, OpenVINO's capabilities, default precision and INT8 kernel (JSON-ready).

    A fresh dict each call (read once per process): callers store it in metadata and reports.
    """
    return dict(_cpu_report(device))


@functools.cache
def _cpu_report(device: str) -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    kernel = int8_kernel(device)
    precision = core.get_property(device, "INFERENCE_PRECISION_HINT")
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "isa_flags": isa_flags(),
        "openvino": ov.__version__.split("-")[0],
        "openvino_device": str(core.get_property(device, "FULL_DEVICE_NAME")),
        "openvino_capabilities": list(core.get_property(device, "OPTIMIZATION_CAPABILITIES")),
        "openvino_default_precision": str(precision).replace("<Type: '", "").replace("'>", ""),
        "int8_kernel": kernel,
        "int8_accumulation": "32-bit (VNNI/AMX)" if has_int8_dot_product(device) else "16-bit saturating pairs",
    }


def describe(report: dict[str, Any]) -> str:
    """One line for a log or a test session's header."""
    flags = report["isa_flags"]
    return (
        f"cpu: {report['cpu']} ({report['cores']} cores); ISA {'/'.join(flags) if flags else 'unknown'}; "
        f"OpenVINO {report['openvino']} capabilities {'/'.join(report['openvino_capabilities'])}, "
        f"default precision {report['openvino_default_precision']}, INT8 kernel {report['int8_kernel']} "
        f"({report['int8_accumulation']})"
    )
