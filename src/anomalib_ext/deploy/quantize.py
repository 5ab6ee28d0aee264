"""INT8 post-training quantisation of an exported IR with NNCF, calibrated on normal training images.

Calibration images go through the same host steps as inference (resize, AMFS alignment), so the
activation ranges NNCF records are the ones the model sees.

What is quantised (``scope``): by default only the feature extractor's convolutions, where the time
goes. Everything from the first ``MatMul`` on (the k-NN / Mahalanobis distance to the memory bank or
Gaussian, then the map's upsampling, Gaussian blur and anomalib's normalisation) stays FP32: calibrated
on normal images only, INT8 ranges there clip every anomaly to the largest normal value, and rounding
``|x|^2 - 2 x.m + |m|^2`` cancels catastrophically. Measured on tiny SyntheticGPD (Patchcore, Padim,
AMFS): quantising the whole graph (``scope="all"``) gave constant maps (pixel AUROC 0.50).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from anomalib_ext.data.mvtec_like import read_rgb
from anomalib_ext.deploy.inferencer import Inferencer, collect_images, resolve_model_dir
from anomalib_ext.deploy.metadata import read_metadata, staged_folder, write_metadata

logger = logging.getLogger(__name__)


class CalibrationDataError(FileNotFoundError):
    """No usable calibration images."""


def calibration_images(calibration, model_dir) -> list[Path]:
    hint = ("INT8 calibration needs the model's normal training images, e.g. --calibration "
            "ROOT/CATEGORY/train/good (a folder, a glob, or files).")
    if calibration is None:
        raise CalibrationDataError(f"No calibration data given for {model_dir}. {hint}")
    try:
        return collect_images(calibration)
    except FileNotFoundError as error:
        raise CalibrationDataError(f"{error} {hint}") from error


CONVOLUTIONS = {"Convolution", "GroupConvolution"}
SCOPES = ("backbone", "all")


def backbone_ignored_scope(ov_model):
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
        raise ValueError("No convolutions before the distance computation: nothing for backbone-scope INT8 to quantise.")
    ignored = [op.get_friendly_name() for op in ov_model.get_ordered_ops()
               if op.get_friendly_name() not in keep and op.get_type_name() not in {"Parameter", "Constant", "Result"}]
    return nncf.IgnoredScope(names=ignored, validate=False)


def quantize_openvino(model_dir: str | Path, calibration, output: str | Path, subset_size: int = 300,
                      scope: str = "backbone", fast_bias_correction: bool = False) -> Path:
    """Write an INT8 copy of the export at ``model_dir`` to ``output`` (model.xml/.bin + host files + metadata).

    Args:
        model_dir: an ``anomalib-ext export`` folder (FP32).
        calibration: normal images (folder, glob, file or list); at most ``subset_size`` are used.
        output: the INT8 export folder (written atomically).
        scope: ``backbone`` (the feature extractor's convolutions; default) or ``all`` (NNCF's default
            choice over the whole graph; see the module docstring for why that fails on our models).
        fast_bias_correction: NNCF's fast bias correction instead of the full one. Off by default: on AMFS
            (lite2, 256 px, tire) it made every score the same (the full one: scores correlate 0.977
            with FP32, maps 0.996); it saves calibration time only.
    """
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # NNCF logs every node it leaves alone at INFO
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    folder, xml = resolve_model_dir(model_dir)
    metadata = read_metadata(folder)
    if metadata["precision"] != "FP32":
        raise ValueError(f"{folder} is already {metadata['precision']}: quantise the FP32 export.")
    paths = calibration_images(calibration, folder)
    rng = np.random.default_rng(0)
    if len(paths) > subset_size:  # a seeded spread over the whole folder, not its first files
        paths = [paths[i] for i in sorted(rng.choice(len(paths), subset_size, replace=False))]
    usable = []
    for path in paths:  # unreadable calibration files are named, not silently dropped by NNCF
        try:
            read_rgb(path)
            usable.append(path)
        except OSError as error:
            logger.error("Calibration: skipped %s", error)
    if not usable:
        raise CalibrationDataError(f"None of the {len(paths)} calibration images at {calibration} could be read.")
    host = Inferencer(folder)

    def transform(path: Path) -> np.ndarray:
        return host.prepare(read_rgb(path), str(path))[0][None]

    fp32_model = ov.Core().read_model(xml)
    ignored = backbone_ignored_scope(fp32_model) if scope == "backbone" else None
    quantized = nncf.quantize(fp32_model, nncf.Dataset(usable, transform), subset_size=len(usable),
                              ignored_scope=ignored, fast_bias_correction=fast_bias_correction)
    output = Path(output)
    with staged_folder(output) as staging:
        ov.save_model(quantized, staging / "model.xml", compress_to_fp16=False)
        for extra in folder.iterdir():  # host-step files (AMFS reference) travel with the model
            if extra.is_file() and extra.name not in {"model.xml", "model.bin", "metadata.json"}:
                shutil.copy2(extra, staging / extra.name)
        metadata.update(precision="INT8", quantization={
            "tool": f"nncf {nncf.__version__}", "calibration_images": len(usable),
            "scope": scope, "fast_bias_correction": fast_bias_correction})
        write_metadata(staging, metadata)
    return output / "model.xml"
