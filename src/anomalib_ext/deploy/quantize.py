"""INT8 post-training quantisation of an exported IR with NNCF, calibrated on normal training images.

Calibration images go through the same host steps as inference (resize, AMFS alignment), so the
activation ranges NNCF records are the ones the model sees.

What is quantised (``scope``): by default only the feature extractor's convolutions, where the time
goes. Everything from the first ``MatMul`` on (the k-NN / Mahalanobis distance to the memory bank or
Gaussian, then the map's upsampling, Gaussian blur and anomalib's normalisation) stays FP32: calibrated
on normal images only, INT8 ranges there clip every anomaly to the largest normal value, and rounding
``|x|^2 - 2 x.m + |m|^2`` cancels catastrophically. Measured on tiny SyntheticGPD (Patchcore, Padim,
AMFS): quantising the whole graph (``scope="all"``) gave constant maps (pixel AUROC 0.50).

Which CPUs it runs on (``target``): an export is made on one machine and deployed on others. By
default (``any``) every quantised layer gets 7-bit weights (NNCF's overflow fix on all layers), which is
exact on every x86 CPU; ``vnni`` keeps NNCF's default (8-bit weights but in the first layer), which is
correct only on CPUs whose INT8 convolutions accumulate in 32 bits (VNNI/AMX) and wrong elsewhere: see
:mod:`anomalib_ext.deploy.cpu`. The choice and the CPU it was calibrated on go into ``metadata.json``,
and the :class:`~anomalib_ext.deploy.inferencer.Inferencer` simulates a ``vnni`` export's INT8 layers
in f32 (correct, but slower than FP32) on a CPU without VNNI, with a warning.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anomalib_ext.data.mvtec_like import read_rgb
from anomalib_ext.deploy.cpu import cpu_report
from anomalib_ext.deploy.folders import EXPORT_FILES, check_export_target, staged_folder
from anomalib_ext.deploy.inferencer import Inferencer, collect_images, read_ir, resolve_model_dir
from anomalib_ext.errors import AnomalibExtError
from anomalib_ext.export_format import read_metadata, write_metadata

if TYPE_CHECKING:
    from collections.abc import Sequence

    import nncf
    import openvino as ov

logger = logging.getLogger(__name__)

# Fewer calibration images than this give activation ranges that move with the draw (issue 10: one
# image moved image scores from 0.857 to 0.649). NNCF's own default is 300; 32 is our documented
# floor for a warning, not a tuned number. The count used is in metadata.json and the report.
MIN_CALIBRATION_IMAGES = 32


class CalibrationDataError(AnomalibExtError, FileNotFoundError):
    """No usable calibration images."""


class AlreadyQuantizedError(AnomalibExtError, ValueError):
    """The export given to quantise is not FP32."""


def calibration_images(calibration: str | Path | Sequence[str | Path] | None, model_dir: str | Path) -> list[Path]:
    """The calibration image files, or a :class:`CalibrationDataError` saying what to give."""
    hint = (
        "INT8 calibration needs the model's normal training images, e.g. --calibration "
        "ROOT/CATEGORY/train/good (a folder, a glob, or files)."
    )
    if calibration is None:
        msg = f"No calibration data given for {model_dir}. {hint}"
        raise CalibrationDataError(msg)
    try:
        return collect_images(calibration)
    except FileNotFoundError as error:
        msg = f"{error} {hint}"
        raise CalibrationDataError(msg) from error


CONVOLUTIONS = {"Convolution", "GroupConvolution"}
SCOPES = ("backbone", "all")
# target CPUs -> NNCF overflow fix (nncf.OverflowFix values) and what the weights become.
TARGETS = {
    "any": ("enable", "7-bit weights in every quantised layer: exact on every x86 CPU"),
    "vnni": ("first_layer_only", "8-bit weights (7-bit in the first layer): only CPUs with VNNI/AMX"),
}


def backbone_ignored_scope(ov_model: ov.Model) -> nncf.IgnoredScope:
    """``nncf.IgnoredScope`` of every node but the convolutions upstream of the first MatMul."""
    import nncf

    downstream: set[str] = set()
    keep: set[str] = set()
    for op in ov_model.get_ordered_ops():  # topological order: producers before consumers
        name = op.get_friendly_name()
        parents = {value.get_source_output().get_node().get_friendly_name() for value in op.inputs()}
        if op.get_type_name() == "MatMul" or parents & downstream:
            downstream.add(name)
        elif op.get_type_name() in CONVOLUTIONS:
            keep.add(name)
    if not keep:
        msg = "No convolutions before the distance computation: nothing for backbone-scope INT8 to quantise."
        raise ValueError(
            msg,
        )
    ignored = [
        op.get_friendly_name()
        for op in ov_model.get_ordered_ops()
        if op.get_friendly_name() not in keep and op.get_type_name() not in {"Parameter", "Constant", "Result"}
    ]
    return nncf.IgnoredScope(names=ignored, validate=False)


def quantize_openvino(
    model_dir: str | Path,
    calibration: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    subset_size: int = 300,
    scope: str = "backbone",
    target: str = "any",
    fast_bias_correction: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write an INT8 copy of the export at ``model_dir`` to ``output`` (model.xml/.bin + host files + metadata).

    Args:
        model_dir: an ``anomalib-ext export`` folder (FP32).
        calibration: normal images (folder, glob, file or list); at most ``subset_size`` are used.
        output: the INT8 export folder (written atomically; never the FP32 folder or a folder holding it;
            a non-empty folder that is not an export only with ``overwrite``).
        subset_size: at most this many calibration images (a seeded spread over all of them).
        scope: ``backbone`` (the feature extractor's convolutions; default) or ``all`` (NNCF's default
            choice over the whole graph; see the module docstring for why that fails on our models).
        target: the CPUs the export will run on. ``any`` (default): 7-bit weights, correct on every x86
            CPU. ``vnni``: full 8-bit weights, for CPUs with AVX512-VNNI, AVX-VNNI or AMX only; on a CPU
            without VNNI its INT8 convolutions overflow (the Inferencer then simulates them in f32).
        fast_bias_correction: NNCF's fast bias correction instead of the full one. Off by default: on AMFS
            (lite2, 256 px, tire) it made every score the same (the full one: scores correlate 0.977
            with FP32, maps 0.996); it saves calibration time only.
        overwrite: write into a non-empty folder that is not an export (only the export's files).
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf.set_log_level(logging.WARNING)  # NNCF logs every node it leaves alone at INFO
    if scope not in SCOPES:
        msg = f"scope must be one of {SCOPES}, got {scope!r}"
        raise ValueError(msg)
    if target not in TARGETS:
        msg = f"target must be one of {tuple(TARGETS)}, got {target!r}"
        raise ValueError(msg)
    if subset_size < 1:
        msg = f"subset_size must be at least 1, got {subset_size}"
        raise ValueError(msg)
    folder, xml = resolve_model_dir(model_dir)
    check_export_target(output, [folder], overwrite)  # before the calibration, which takes minutes
    metadata = read_metadata(folder)
    if metadata["precision"] != "FP32":
        msg = f"{folder} is already {metadata['precision']}: quantise the FP32 export (--model-dir)."
        raise AlreadyQuantizedError(
            msg,
        )
    paths = calibration_images(calibration, folder)
    rng = np.random.default_rng(0)
    if len(paths) > subset_size:  # a seeded spread over the whole folder, not its first files
        paths = [paths[i] for i in sorted(rng.choice(len(paths), subset_size, replace=False))]
    usable = []
    for path in paths:  # unreadable calibration files are named, not silently dropped by NNCF
        try:
            read_rgb(path)
        except OSError as error:  # ruff: ignore[try-except-in-loop] - each file on its own
            logger.error("Calibration: skipped %s", error)  # ruff: ignore[error-instead-of-exception] - one line per file, no traceback
        else:
            usable.append(path)
    if not usable:
        msg = f"None of the {len(paths)} calibration images at {calibration} could be read."
        raise CalibrationDataError(msg)
    if len(usable) < MIN_CALIBRATION_IMAGES:
        logger.warning(
            "INT8 calibration on %d image(s) only (at least %d recommended): activation ranges from so few "
            "images are unreliable and scores may shift. Give more normal training images with --calibration.",
            len(usable),
            MIN_CALIBRATION_IMAGES,
        )
    host = Inferencer(folder)
    # A fixed-batch IR (anomalib_ext.ir_batch) takes each calibration image repeated to its batch: the
    # activation ranges are those of the image.
    batch = host.fixed_batch or 1

    def transform(path: Path) -> np.ndarray:
        return np.repeat(host.prepare(read_rgb(path), str(path))[0][None], batch, axis=0)

    fp32_model = read_ir(ov.Core(), xml)
    ignored = backbone_ignored_scope(fp32_model) if scope == "backbone" else None
    overflow_fix, weights = TARGETS[target]
    quantized = nncf.quantize(
        fp32_model,
        nncf.Dataset(usable, transform),
        subset_size=len(usable),
        ignored_scope=ignored,
        fast_bias_correction=fast_bias_correction,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix)),
    )
    output = Path(output)
    with staged_folder(output, [folder], overwrite) as staging:
        ov.save_model(quantized, staging / "model.xml", compress_to_fp16=False)
        # Host-step files (AMFS reference) travel with the model: the files the FP32 export lists
        # (every file in its folder for exports older than that list), less the model's own.
        listed = set(metadata.get("files", [])) or {p.name for p in folder.iterdir() if p.is_file()}
        for name in sorted(listed - EXPORT_FILES):
            shutil.copy2(folder / name, staging / name)
        metadata.update(
            precision="INT8",
            quantization={
                "tool": f"nncf {nncf.__version__}",
                "calibration_images": len(usable),
                "scope": scope,
                "target_cpu": target,
                "overflow_fix": overflow_fix,
                "weights": weights,
                "calibrated_on": cpu_report(),
                "fast_bias_correction": fast_bias_correction,
                "min_recommended_images": MIN_CALIBRATION_IMAGES,
            },
        )
        write_metadata(staging, metadata)
    return output / "model.xml"
