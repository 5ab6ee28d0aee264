"""Benchmark grid: models x datasets x input sizes -> quality, speed and memory, as CSV, markdown and plots.

    python tools/benchmark.py --config configs/benchmark/default.yaml --out results/benchmark

Each job (model, dataset, size) runs in its own process (so its peak memory is its own) through
anomalib's Engine: fit -> test (image AUROC, F1; pixel AUROC, AUPRO, AP) -> our OpenVINO export (FP32,
dynamic batch) -> NNCF INT8 calibrated on the category's ``train/good`` images -> the accuracy of both
IRs on the test split -> latency at batch 1 (median of repeats after warm-up) and throughput at batch 8
for torch eager, OpenVINO FP32 and INT8 on CPU. ``*_e2e_ms`` include the host steps (resize from
the stored image, AMFS alignment and warp back); the others are the model / IR call alone. FP32 and
INT8 are timed interleaved (round by round), so a slow spell of a shared machine hits both alike;
``--retime`` measures the OpenVINO latencies of finished jobs again from their saved IRs.

Output in ``--out``: ``jobs/<job>.json`` (one per job; a finished job is not run again unless
``--rerun``), ``results.csv``, ``results.md``, ``auroc_vs_latency.png``, ``image_auroc_by_dataset.png``
and ``machine.json`` (CPU model, cores, thread counts, versions).

Why not ``anomalib benchmark``: its pipeline runs fit + test only (no export, INT8 or latency), and its
collect step fails when the models' ``init_args`` keys differ (Padim's ``n_features`` vs Patchcore's
``coreset_sampling_ratio``). For plain fit/test grids it works with our models after ``register()``:
see ``configs/benchmark/amfs_vs_patchcore.yaml``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


# ---- one job (runs in a child process) --------------------------------------------------------
def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _evaluator():
    from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Score

    # strict=False on pixel metrics: image-label-only sets (bottle) report image metrics only.
    return Evaluator(test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ])


def _test_images(samples, size: int, count: int):
    """``count`` test images (spread over the defect types) as a (count, 3, size, size) tensor in [0, 1]."""
    import torch

    from anomalib_ext.data.mvtec_like import read_rgb

    paths = samples.image_path.tolist()
    picks = [paths[i * len(paths) // count] for i in range(count)]
    images = [torch.from_numpy(read_rgb(p)).permute(2, 0, 1).float()[None] / 255 for p in picks]
    resized = [torch.nn.functional.interpolate(i, size=(size, size), mode="bilinear", antialias=True) for i in images]
    return torch.cat(resized), [read_rgb(p) for p in picks]


def _torch_timings(model, batch, repeats: int) -> dict[str, float]:
    """Eager latency at batch 1 (model call, and end to end with host steps) and throughput at batch 8."""
    import torch

    from anomalib_ext.deploy.timing import median_ms

    model.eval()
    with torch.no_grad():
        one, eight = batch[:1], batch[:8]
        result = {"torch_ms": median_ms(lambda: model(one), repeats)}
        if hasattr(model, "predict_aligned"):  # AMFS: host alignment + model + warp back + post-processing
            result["torch_e2e_ms"] = median_ms(lambda: model.post_processor(_as_batch(model.predict_aligned(one))), repeats)
        else:
            result["torch_e2e_ms"] = result["torch_ms"]
        result["torch_images_per_s_b8"] = 8000 / median_ms(lambda: model(eight), max(3, repeats // 8))
    return result


def _as_batch(outputs: dict):
    from anomalib.data import InferenceBatch

    return InferenceBatch(pred_score=outputs["pred_score"], anomaly_map=outputs["anomaly_map"])


def _openvino_timings(folders: dict[str, Path], raw_images, repeats: int) -> dict[str, Any]:
    """FP32 and INT8 timed interleaved (their ratio is the INT8 speed-up; a shared VM drifts)."""
    from anomalib_ext.deploy.timing import compare_openvino

    row = {}
    for prefix, timing in compare_openvino(folders, raw_images, repeats).items():
        row.update({f"{prefix}_ms": timing["latency_ms_b1"], f"{prefix}_e2e_ms": timing["e2e_ms"],
                    f"{prefix}_images_per_s_b8": timing["images_per_s_b8"], f"{prefix}_precision": timing["openvino_precision"]})
    row["ov_timing"] = "interleaved"
    return row


def _category_root(job: dict[str, Any]) -> Path:
    data = _import(job["data"]["class_path"])(**job["data"].get("init_args", {}))
    return Path(data.root) / job["data"]["init_args"]["category"]


def retime(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Measure the OpenVINO latencies of a finished job again, from its saved IRs (no training)."""
    from anomalib_ext.data.mvtec_like import make_mvtec_like_samples

    category_root = _category_root(job)
    samples = make_mvtec_like_samples(category_root)
    _, raw = _test_images(samples[samples.split == "test"], job["size"], 8)
    work = out / "work" / job["name"]
    return _openvino_timings({"ov_fp32": work / "openvino_fp32", "ov_int8": work / "openvino_int8"}, raw, job["repeats"])


def run_job(job: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext import register
    from anomalib_ext.components import use_fast_coreset
    from anomalib_ext.deploy.evaluate import evaluate_openvino
    from anomalib_ext.deploy.export import export_openvino
    from anomalib_ext.deploy.quantize import quantize_openvino

    register()
    use_fast_coreset()  # Patchcore's coreset with our exact greedy k-center (same algorithm, ~14x faster)
    seed_everything(job.get("seed", 0))
    size, repeats = job["size"], job["repeats"]
    model_cls = _import(job["model"]["class_path"])
    model = model_cls(**job["model"].get("init_args", {}), evaluator=_evaluator(),
                      pre_processor=model_cls.configure_pre_processor((size, size)))
    data = _import(job["data"]["class_path"])(**job["data"].get("init_args", {}))
    work = out / "work" / job["name"]
    engine = Engine(default_root_dir=work, logger=False, enable_progress_bar=False, accelerator="cpu")
    start = time.perf_counter()
    engine.fit(model=model, datamodule=data)
    row: dict[str, Any] = {"fit_s": time.perf_counter() - start}
    metrics = engine.test(model=model, datamodule=data, verbose=False)[0]
    row.update({k: float(v) for k, v in metrics.items()})
    test_samples = data.test_data.samples  # honours subsets (defect_types, max_defect_area)
    batch, raw = _test_images(test_samples, size, 8)
    row.update(_torch_timings(model, batch, repeats))
    fp32 = export_openvino(model, work / "openvino_fp32", (size, size)).parent
    train_good = Path(data.root) / job["data"]["init_args"]["category"] / "train" / "good"  # INT8 calibration
    int8 = quantize_openvino(fp32, train_good, work / "openvino_int8", subset_size=job["int8_subset_size"]).parent
    for prefix, folder in (("ov_fp32", fp32), ("ov_int8", int8)):
        accuracy = evaluate_openvino(folder, test_samples, progress=False)
        row.update({f"{prefix}_{k}": v for k, v in accuracy.items()})
    row.update(_openvino_timings({"ov_fp32": fp32, "ov_int8": int8}, raw, repeats))
    row["torch_threads"] = torch.get_num_threads()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


# ---- the grid (parent process) ----------------------------------------------------------------
def expand(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One job per (model, dataset, size), named ``<model>__<dataset>__<size>``."""
    jobs = []
    for size in config.get("sizes", [256]):
        for data_name, data in config["datasets"].items():
            if data.get("skip_if_missing") and not (REPO / data["skip_if_missing"]).exists():
                print(f"dataset {data_name}: {data['skip_if_missing']} is not present, skipped")
                continue
            for model_name, model in config["models"].items():
                jobs.append({"name": f"{model_name}__{data_name}__{size}", "model_name": model_name, "dataset": data_name,
                             "size": size, "model": model, "data": data, "seed": config.get("seed", 0),
                             "repeats": config.get("repeats", 20), "int8_subset_size": config.get("int8_subset_size", 300)})
    return jobs


def machine() -> dict[str, Any]:
    import anomalib
    import openvino
    import torch

    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "openvino_threads": "OpenVINO default (all cores)", "torch": torch.__version__, "anomalib": anomalib.__version__,
            "openvino": openvino.__version__, "python": platform.python_version()}


COLUMNS = {  # results.md: column -> header
    "image_AUROC": "img AUROC", "pixel_AUROC": "px AUROC", "pixel_AUPRO": "AUPRO", "pixel_AUPR": "px AP", "image_F1Score": "F1",
    "fit_s": "fit s", "torch_ms": "torch ms", "ov_fp32_ms": "OV FP32 ms", "ov_int8_ms": "OV INT8 ms", "ov_speedup": "OV/torch",
    "int8_speedup": "INT8/FP32", "int8_image_auroc_change": "INT8 Δimg AUROC", "ov_fp32_e2e_ms": "OV e2e ms",
    "ov_fp32_images_per_s_b8": "FP32 img/s b8", "ov_int8_images_per_s_b8": "INT8 img/s b8", "peak_rss_mb": "peak MB",
    "job_s": "job s",
}


def summarise(rows: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(rows)
    table["ov_speedup"] = table["torch_ms"] / table["ov_fp32_ms"]
    table["int8_speedup"] = table["ov_fp32_ms"] / table["ov_int8_ms"]
    table["int8_image_auroc_change"] = table["ov_int8_image_AUROC"] - table["ov_fp32_image_AUROC"]
    table.to_csv(out / "results.csv", index=False)
    shown = table[["dataset", "model_name", "size"] + [c for c in COLUMNS if c in table]].rename(columns={**COLUMNS, "model_name": "model"})
    (out / "results.md").write_text(shown.to_markdown(index=False, floatfmt=".3f") + "\n")
    _plots(table, out)


def _plots(table, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (model, group), color in zip(table.groupby("model_name"), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.scatter(group["ov_fp32_e2e_ms"], group["image_AUROC"], color=color, label=f"{model} (OV FP32)", s=40)
        ax.scatter(group["ov_int8_e2e_ms"], group["ov_int8_image_AUROC"], color=color, marker="x", label=f"{model} (OV INT8)", s=40)
        for _, row in group.iterrows():
            ax.annotate(row["dataset"], (row["ov_fp32_e2e_ms"], row["image_AUROC"]), fontsize=7, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("latency per image, batch 1, end to end on CPU (ms, log)")
    ax.set_ylabel("image AUROC")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "auroc_vs_latency.png", dpi=120)
    plt.close(fig)
    pivot = table.pivot_table(index="dataset", columns="model_name", values="image_AUROC")
    ax = pivot.plot.bar(figsize=(7, 4), rot=0)
    ax.set_ylabel("image AUROC")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "image_auroc_by_dataset.png", dpi=120)
    plt.close(ax.figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs/benchmark/default.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    parser.add_argument("--only", nargs="+", help="run only jobs whose name contains one of these strings")
    parser.add_argument("--rerun", action="store_true", help="run jobs again even when their result file exists")
    parser.add_argument("--retime", action="store_true",
                        help="measure the OpenVINO latencies of finished jobs again from their saved IRs (interleaved FP32/INT8)")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # internal: run one job file in this process
    args = parser.parse_args()
    if args.job and args.retime:
        job = json.loads(args.job.read_text())
        result = args.out / "jobs" / f"{job['name']}.json"
        row = json.loads(result.read_text())
        row.update(retime(job, args.out))
        result.write_text(json.dumps(row, indent=1))
        return
    if args.job:
        job = json.loads(args.job.read_text())
        row = {"job": job["name"], "model_name": job["model_name"], "dataset": job["dataset"], "size": job["size"]}
        start = time.perf_counter()
        row.update(run_job(job, args.out))
        row["job_s"] = time.perf_counter() - start
        (args.out / "jobs" / f"{job['name']}.json").write_text(json.dumps(row, indent=1))
        return
    config = yaml.safe_load(args.config.read_text())
    (args.out / "jobs").mkdir(parents=True, exist_ok=True)
    (args.out / "machine.json").write_text(json.dumps(machine(), indent=1))
    jobs = [j for j in expand(config) if not args.only or any(s in j["name"] for s in args.only)]
    failed = []
    for index, job in enumerate(jobs, 1):
        result = args.out / "jobs" / f"{job['name']}.json"
        if args.retime:
            if not result.is_file():
                print(f"[{index}/{len(jobs)}] {job['name']}: not run yet, nothing to retime", flush=True)
                continue
            spec = args.out / "jobs" / f"{job['name']}.job"
            spec.write_text(json.dumps(job))
            code = subprocess.call([sys.executable, __file__, "--job", str(spec), "--out", str(args.out), "--retime"], cwd=REPO)
            print(f"[{index}/{len(jobs)}] {job['name']}: retimed" if code == 0 else f"retime FAILED (exit {code})", flush=True)
            if code:
                failed.append(job["name"])
            continue
        if result.is_file() and not args.rerun:
            print(f"[{index}/{len(jobs)}] {job['name']}: done before, kept ({result})", flush=True)
            continue
        spec = args.out / "jobs" / f"{job['name']}.job"
        spec.write_text(json.dumps(job))
        print(f"[{index}/{len(jobs)}] {job['name']} ...", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, __file__, "--job", str(spec), "--out", str(args.out)], cwd=REPO)
        print(f"[{index}/{len(jobs)}] {job['name']}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(job["name"])
    rows = [json.loads((args.out / "jobs" / f"{j['name']}.json").read_text()) for j in jobs if (args.out / "jobs" / f"{j['name']}.json").is_file()]
    if rows:
        summarise(rows, args.out)
        print((args.out / "results.md").read_text())
    if failed:
        print(f"Failed jobs: {', '.join(failed)} (their logs are above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
