"""Issue 24: the two INT8 targets side by side on the FP32 IRs of a finished ``grid.yaml`` run.

    python tools/benchmark.py --config experiments/int8_cpu/grid.yaml --out results/int8_cpu
    python experiments/int8_cpu/vnni_target.py --out results/int8_cpu

For each job of the grid (its FP32 IR and its default ``--target any`` INT8 IR are in
``OUT/work/<job>/``) this quantises the same FP32 IR with ``--target vnni`` (NNCF's default: 8-bit
weights), then scores it on the test split twice: with this CPU's own INT8 kernels (``native``) and with
the quantisation simulated in f32 (what a CPU with VNNI/AMX computes). FP32, ``any`` and ``vnni`` are
then timed interleaved at batch 1 with native kernels. Writes ``OUT/vnni/<job>.json`` and the table
``OUT/int8_targets.md`` (with the grid's ``any`` columns beside them) and names the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anomalib_ext import register
from anomalib_ext.benchmarking.build import build_datamodule
from anomalib_ext.benchmarking.jobs import sample_test_images
from anomalib_ext.data.mvtec_like import make_mvtec_like_samples
from anomalib_ext.deploy.cpu import cpu_report, describe
from anomalib_ext.deploy.evaluate import compare_exports
from anomalib_ext.deploy.quantize import quantize_openvino
from anomalib_ext.deploy.timing import compare_openvino


def measure(job: dict, out: Path) -> dict:
    """The vnni target's accuracy (native, simulated) and the three exports' latencies for one job."""
    data = build_datamodule(job["data"])
    category = Path(data.root) / data.category
    samples = make_mvtec_like_samples(category)
    test = samples[samples.split == "test"].reset_index(drop=True)
    work = out / "work" / job["name"]
    fp32, safe, vnni = work / "openvino_fp32", work / "openvino_int8", work / "openvino_int8_vnni"
    if not (vnni / "model.xml").is_file():
        quantize_openvino(
            fp32,
            category / "train" / "good",
            vnni,
            subset_size=job.get("int8_subset_size", 300),
            target="vnni",
        )
    accuracy = compare_exports(
        {"FP32": fp32, "INT8": vnni},
        test,
        [],
        timing=False,
        simulate_int8=True,
        int8_arithmetic="native",
    )
    _, raw = sample_test_images(test, job["size"])
    timing = compare_openvino(
        {"FP32": fp32, "INT8_any": safe, "INT8_vnni": vnni},
        raw,
        repeats=job.get("repeats", 20),
        int8_arithmetic="native",
    )
    return {
        "job": job["name"],
        "vnni_native": accuracy["INT8"],
        "vnni_simulated": accuracy["INT8_simulated"],
        "timing_native": timing,
        "measured_on": cpu_report(),
    }


def _cell(row: dict, prefix: str) -> str:
    pixel = row.get(f"{prefix}pixel_AUROC")
    pixel = "-" if pixel is None else f"{pixel:.3f}"
    return f"{row[f'{prefix}image_AUROC']:.3f} / {pixel}"


def table(out: Path) -> str:
    """One row per job: FP32, any (native), vnni (native on this CPU; simulated = a VNNI CPU), latencies."""
    lines = [
        (
            "| set | model | FP32 img / px AUROC | any: img / px | any: map corr mean (min) | any native vs "
            "simulated | vnni here: img / px | vnni here: map corr mean (min) | vnni on a VNNI CPU (simulated): "
            "img / px | its map corr mean (min) | b1 ms FP32 / any / vnni |"
        ),
        "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for path in sorted((out / "vnni").glob("*.json")):
        vnni = json.loads(path.read_text())
        grid = json.loads((out / "jobs" / path.name).read_text())
        timing = vnni["timing_native"]
        native, simulated = vnni["vnni_native"], vnni["vnni_simulated"]
        lines.append(
            f"| {grid['dataset']} | {grid['model_name']} | {_cell(grid, 'ov_fp32_')} | {_cell(grid, 'ov_int8_')} | "
            f"{grid['ov_int8_map_correlation_mean']:.3f} ({grid['ov_int8_map_correlation_min']:.3f}) | "
            f"{_simulated_vs_native(grid)} | {_cell(native, '')} | "
            f"{native['map_correlation_mean']:.3f} ({native['map_correlation_min']:.3f}) | {_cell(simulated, '')} | "
            f"{simulated['map_correlation_mean']:.3f} ({simulated['map_correlation_min']:.3f}) | "
            f"{timing['FP32']['latency_ms_b1']:.1f} / {timing['INT8_any']['latency_ms_b1']:.1f} / "
            f"{timing['INT8_vnni']['latency_ms_b1']:.1f} |",
        )
    return "\n".join(lines) + "\n"


def _simulated_vs_native(grid: dict) -> str:
    """How far this CPU's native ``any`` INT8 is from its exact (simulated) arithmetic: image AUROC change."""
    change = grid["ov_int8_image_AUROC"] - grid["ov_int8_sim_image_AUROC"]
    return f"Δimg {change:+.3f}"


def main() -> None:
    """Measure every finished job of the grid in ``--out`` (or ``--only`` some), then write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/int8_cpu"))
    parser.add_argument("--only", nargs="+", help="jobs whose name contains one of these strings")
    parser.add_argument("--rerun", action="store_true", help="measure jobs again even when their file exists")
    args = parser.parse_args()
    register()
    (args.out / "vnni").mkdir(parents=True, exist_ok=True)
    print(describe(cpu_report()), flush=True)
    for spec in sorted((args.out / "jobs").glob("*.job")):
        job = json.loads(spec.read_text())
        result = args.out / "vnni" / f"{job['name']}.json"
        if args.only and not any(s in job["name"] for s in args.only):
            continue
        if not (args.out / "jobs" / f"{job['name']}.json").is_file() or (result.is_file() and not args.rerun):
            continue
        print(f"{job['name']} ...", flush=True)
        result.write_text(json.dumps(measure(job, args.out), indent=1))
    (args.out / "int8_targets.md").write_text(describe(cpu_report()) + "\n\n" + table(args.out))
    print((args.out / "int8_targets.md").read_text())


if __name__ == "__main__":
    main()
