"""``anomalib-ext export | quantize | infer``: the deployment commands (argparse; each returns an exit code).

Exit codes (:mod:`anomalib_ext.errors`): 0 done; 1 ``infer`` ran but some images failed (listed in
``scores.csv``; ``--allow-errors`` keeps 0); 2 bad arguments or inputs, with a one-line message naming
the file and the fix, and nothing written.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from anomalib_ext.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, AnomalibExtError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)


def positive_int(text: str) -> int:
    """Argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        msg = f"{text!r} is not an integer"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _command(
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[Sequence[str] | None], int]]:
    """Parse with ``add_arguments``, run the decorated function with telemetry off, print our errors in one line."""

    def decorate(run: Callable[[argparse.Namespace], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(run)
        def main(argv: Sequence[str] | None = None) -> int:
            from anomalib_ext.offline import disable_telemetry

            disable_telemetry()
            parser = argparse.ArgumentParser(prog=f"anomalib-ext {name}", description=run.__doc__)
            add_arguments(parser)
            args = parser.parse_args(argv)
            try:
                return run(args)
            except AnomalibExtError as error:
                print(f"anomalib-ext {name}: error: {error}", file=sys.stderr)
                return EXIT_USAGE

        return main

    return decorate


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model class name (AMFS, Patchcore, Padim, ...) or class path")
    parser.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", required=True)
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        help="export folder (model.xml, model.bin, metadata.json)",
    )
    parser.add_argument(
        "--input-size",
        type=positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="default: the model's pre-processor size",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that is not an export (only the export's files are written; "
        "nothing is removed)",
    )


def _quantize_arguments(parser: argparse.ArgumentParser) -> None:
    from anomalib_ext.deploy.quantize import MIN_CALIBRATION_IMAGES, TARGETS

    parser.add_argument("--model-dir", required=True, type=Path, help="the FP32 export folder")
    parser.add_argument(
        "--calibration",
        required=True,
        help="normal training images: folder, glob or file (e.g. ROOT/CAT/train/good)",
    )
    parser.add_argument("--output", required=True, type=Path, help="the INT8 export folder (not the FP32 one)")
    parser.add_argument(
        "--subset-size",
        type=positive_int,
        default=300,
        help=f"at most this many calibration images (default 300; below {MIN_CALIBRATION_IMAGES} a warning)",
    )
    parser.add_argument(
        "--scope",
        choices=["backbone", "all"],
        default="backbone",
        help="backbone: only the feature extractor's convolutions (default); all: NNCF's choice over the whole graph",
    )
    parser.add_argument(
        "--target",
        choices=list(TARGETS),
        default="any",
        help="the CPUs the INT8 model will run on. any (default): 7-bit weights, correct on every x86 CPU; "
        "vnni: full 8-bit weights, only for CPUs with AVX512-VNNI/AVX-VNNI/AMX (wrong maps elsewhere: there "
        "it is simulated in f32, slower than FP32)",
    )
    parser.add_argument(
        "--fast-bias-correction",
        action="store_true",
        help="NNCF's fast bias correction (quicker; broke AMFS in our tests)",
    )
    parser.add_argument(
        "--eval-data",
        type=Path,
        help="an MVTec-like category folder: compare FP32 and INT8 accuracy and latency",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that is not an export (only the export's files are written; "
        "nothing is removed)",
    )


def _infer_arguments(parser: argparse.ArgumentParser) -> None:
    from anomalib_ext.deploy.inferencer import Inferencer

    parser.add_argument("--model-dir", required=True, help="export folder (model.xml + metadata.json) or its .xml")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="image files, folders or globs (output folders are skipped)",
    )
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--device", default="CPU")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="OpenVINO inference threads (default: all cores)",
    )
    parser.add_argument("--timing", action="store_true", help="add per-image time (ms) to scores.csv")
    parser.add_argument(
        "--precision",
        choices=list(Inferencer.PRECISIONS),
        default="f32",
        help="f32: the scores the model was evaluated with (default); auto/bf16: OpenVINO's bf16 on CPUs "
        "with AMX/AVX512-BF16, faster there but scores move by a few hundredths",
    )
    parser.add_argument(
        "--int8-arithmetic",
        choices=list(Inferencer.INT8_ARITHMETICS),
        default="auto",
        help="INT8 exports: native kernels, or quantisation simulated in f32 (a VNNI CPU's exact result on any "
        "CPU, slower). auto (default): native, but simulated for a --target vnni export on a CPU without VNNI",
    )
    parser.add_argument("--allow-errors", action="store_true", help="exit 0 even when some images could not be used")


@_command("export", _export_arguments)
def export_main(args: argparse.Namespace) -> int:
    """Export a checkpoint to OpenVINO (FP32 IR, dynamic batch) + metadata.json."""
    from anomalib_ext.deploy.checkpoint import load_model
    from anomalib_ext.deploy.export import export_openvino
    from anomalib_ext.deploy.folders import check_export_target

    check_export_target(args.output, [args.ckpt_path], args.overwrite)  # before loading the model
    model = load_model(args.model, args.ckpt_path)
    xml = export_openvino(model, args.output, args.input_size, overwrite=args.overwrite, inputs=[args.ckpt_path])
    print(f"Exported {xml}")
    return EXIT_OK


def _quantization_report(model_dir: Path, output: Path, eval_data: Path) -> dict:
    """FP32 vs INT8 on ``eval_data``'s test split: accuracy of both, map agreement, interleaved latencies, the CPU."""
    from anomalib_ext.data.mvtec_like import make_mvtec_like_samples, read_rgb
    from anomalib_ext.deploy.evaluate import compare_exports
    from anomalib_ext.export_format import read_metadata

    test = make_mvtec_like_samples(eval_data).query("split == 'test'").image_path.tolist()
    images = [read_rgb(p) for p in test[:: max(1, len(test) // 8)][:8]]
    report = compare_exports({"FP32": model_dir, "INT8": output}, eval_data, images)
    quantization = read_metadata(output)["quantization"]
    report["calibration_images"] = quantization["calibration_images"]
    report["quantization"] = quantization  # the target, the overflow fix and the CPU it was calibrated on
    return report


@_command("quantize", _quantize_arguments)
def quantize_main(args: argparse.Namespace) -> int:
    """Quantise an FP32 export to INT8 with NNCF; with --eval-data, report the accuracy change and speed-up."""
    from anomalib_ext.deploy.quantize import MIN_CALIBRATION_IMAGES, quantize_openvino
    from anomalib_ext.export_format import read_metadata
    from anomalib_ext.files import write_bytes_atomic

    xml = quantize_openvino(
        args.model_dir,
        args.calibration,
        args.output,
        subset_size=args.subset_size,
        scope=args.scope,
        target=args.target,
        fast_bias_correction=args.fast_bias_correction,
        overwrite=args.overwrite,
    )
    quantization = read_metadata(xml.parent)["quantization"]
    used = quantization["calibration_images"]
    low = f" (fewer than the {MIN_CALIBRATION_IMAGES} recommended)" if used < MIN_CALIBRATION_IMAGES else ""
    print(f"Quantised {xml} with {used} calibration image(s){low}, for {quantization['weights']}")
    if args.eval_data:
        report = _quantization_report(args.model_dir, args.output, args.eval_data)
        print(json.dumps(report, indent=1))
        write_bytes_atomic(Path(args.output) / "quantization_report.json", json.dumps(report, indent=1).encode())
    return EXIT_OK


@_command("infer", _infer_arguments)
def infer_main(args: argparse.Namespace) -> int:
    """Run an exported model on a file, folder or glob; write maps, masks, overlays and scores.csv."""
    from anomalib_ext.deploy.outputs import run_inference

    results = run_inference(
        args.model_dir,
        args.input,
        args.output,
        device=args.device,
        batch_size=args.batch_size,
        timing=args.timing,
        num_threads=args.threads,
        precision=args.precision,
        int8_arithmetic=args.int8_arithmetic,
    )
    failed = [r for r in results if r.error]
    print(
        f"{len(results) - len(failed)} of {len(results)} images -> {args.output}/scores.csv, maps/, masks/, overlays/",
    )
    for result in failed:
        print(f"ERROR {result.path}: {result.error}", file=sys.stderr)
    if failed and not args.allow_errors:
        print(
            f"{len(failed)} image(s) failed (status 'error' in scores.csv); exit {EXIT_SOME_FAILED} "
            "(--allow-errors to exit 0).",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return EXIT_OK
