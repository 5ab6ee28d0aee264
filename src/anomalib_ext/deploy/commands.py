"""``anomalib-ext export | quantize | infer``: the deployment commands (argparse; each returns an exit code)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def load_model(name: str, ckpt_path: str | Path):
    """A trained model from a checkpoint; ``name`` is a class name known to anomalib (ours included) or a class path."""
    import importlib

    import anomalib.models

    from anomalib_ext import register

    register()
    if "." in name:
        module, _, attr = name.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
    else:
        matches = {n.lower(): n for n in dir(anomalib.models)}
        if name.lower() not in matches:
            raise ValueError(f"Unknown model {name!r}: give an anomalib model name (Patchcore, Padim, AMFS, ...) or a class path.")
        cls = getattr(anomalib.models, matches[name.lower()])
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"Checkpoint {ckpt_path} does not exist (anomalib writes them under results/<model>/.../weights/lightning/).")
    # strict=False: checkpoints from runs with extra evaluator metrics carry their (unused) state.
    return cls.load_from_checkpoint(str(ckpt_path), map_location="cpu", strict=False, weights_only=False)


def export_main(argv: Sequence[str] | None = None) -> int:
    """Export a checkpoint to OpenVINO (FP32 IR, dynamic batch) + metadata.json."""
    from anomalib_ext.deploy.export import export_openvino

    parser = argparse.ArgumentParser(prog="anomalib-ext export", description=export_main.__doc__)
    parser.add_argument("--model", required=True, help="model class name (AMFS, Patchcore, Padim, ...) or class path")
    parser.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", required=True)
    parser.add_argument("--output", required=True, type=Path, help="export folder (model.xml, model.bin, metadata.json)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the model's pre-processor size")
    args = parser.parse_args(argv)
    xml = export_openvino(load_model(args.model, args.ckpt_path), args.output, args.input_size)
    print(f"Exported {xml}")
    return 0


def quantize_main(argv: Sequence[str] | None = None) -> int:
    """Quantise an FP32 export to INT8 with NNCF; with --eval-data, report the accuracy change and speed-up."""
    from anomalib_ext.deploy.quantize import quantize_openvino

    parser = argparse.ArgumentParser(prog="anomalib-ext quantize", description=quantize_main.__doc__)
    parser.add_argument("--model-dir", required=True, type=Path, help="the FP32 export folder")
    parser.add_argument("--calibration", required=True, help="normal training images: folder, glob or file (e.g. ROOT/CAT/train/good)")
    parser.add_argument("--output", required=True, type=Path, help="the INT8 export folder")
    parser.add_argument("--subset-size", type=int, default=300)
    parser.add_argument("--scope", choices=["backbone", "all"], default="backbone",
                        help="backbone: only the feature extractor's convolutions (default); all: NNCF's choice over the whole graph")
    parser.add_argument("--fast-bias-correction", action="store_true", help="NNCF's fast bias correction (quicker; broke AMFS in our tests)")
    parser.add_argument("--eval-data", type=Path, help="an MVTec-like category folder: compare FP32 and INT8 accuracy and latency")
    args = parser.parse_args(argv)
    xml = quantize_openvino(args.model_dir, args.calibration, args.output, args.subset_size, args.scope, args.fast_bias_correction)
    print(f"Quantised {xml}")
    if args.eval_data:
        from anomalib_ext.data.mvtec_like import make_mvtec_like_samples, read_rgb
        from anomalib_ext.deploy.evaluate import evaluate_openvino
        from anomalib_ext.deploy.timing import compare_openvino

        folders = {"FP32": args.model_dir, "INT8": args.output}
        test = make_mvtec_like_samples(args.eval_data).query("split == 'test'").image_path.tolist()
        images = [read_rgb(p) for p in test[:: max(1, len(test) // 8)][:8]]
        timings = compare_openvino(folders, images)
        report = {name: {**evaluate_openvino(folder, args.eval_data), **timings[name]} for name, folder in folders.items()}
        report["image_AUROC_change"] = report["INT8"]["image_AUROC"] - report["FP32"]["image_AUROC"]
        report["speedup_batch1"] = report["FP32"]["latency_ms_b1"] / report["INT8"]["latency_ms_b1"]
        report["speedup_batch8"] = report["INT8"]["images_per_s_b8"] / report["FP32"]["images_per_s_b8"]
        print(json.dumps(report, indent=1))
        (Path(args.output) / "quantization_report.json").write_text(json.dumps(report, indent=1))
    return 0


def infer_main(argv: Sequence[str] | None = None) -> int:
    """Run an exported model on a file, folder or glob; write maps, masks, overlays and scores.csv."""
    from anomalib_ext.deploy.outputs import run_inference

    parser = argparse.ArgumentParser(prog="anomalib-ext infer", description=infer_main.__doc__)
    parser.add_argument("--model-dir", required=True, help="export folder (model.xml + metadata.json) or its .xml")
    parser.add_argument("--input", required=True, nargs="+", help="image files, folders or globs")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO inference threads (default: all cores)")
    parser.add_argument("--timing", action="store_true", help="add per-image time (ms) to scores.csv")
    args = parser.parse_args(argv)
    predictions, errors = run_inference(args.model_dir, args.input, args.output, args.device, args.batch_size, args.timing, args.threads)
    print(f"{len(predictions)} images -> {args.output}/scores.csv, maps/, masks/, overlays/")
    for error in errors:
        print(f"ERROR {error}")
    return 1 if errors and not predictions else 0
