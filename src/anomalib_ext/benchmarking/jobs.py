"""One benchmark job: a model on a dataset at one size and seed, through anomalib's Engine.

Stages (a job runs those its ``stages`` list names, in this order):

- ``fit``, ``test``: Engine fit and test (image AUROC, F1; pixel AUROC, AUPRO, AP); ``subsets`` are
  tested too without refitting (e.g. ``letter: {defect_types: [letter]}`` -> ``letter_image_AUROC``).
- ``export``: our OpenVINO export (FP32, dynamic batch) of the trained model.
- ``int8``: NNCF INT8 calibrated on the category's ``train/good`` images, for the CPUs the job's
  ``int8_target`` names (``any``, the default, or ``vnni``: see :mod:`anomalib_ext.deploy.quantize`).
- ``accuracy``: image/pixel AUROC of the IRs on the test split (as the Inferencer scores it), and how
  closely INT8's maps follow FP32's; with ``int8_simulated: true`` also INT8 with its quantisation
  simulated in f32 (``ov_int8_sim_*``: what a CPU with VNNI computes, whatever this CPU is).
- ``timing``: torch eager (model call; end to end with host steps), OpenVINO FP32/INT8 latencies
  (batch 1, end to end, batch-8 throughput; FP32 and INT8 interleaved), and the host steps alone.

Returns a flat row (numbers and short strings) for the grid's CSV.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anomalib_ext.benchmarking.build import build_datamodule, build_model, default_evaluator

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

STAGES = ("fit", "test", "export", "int8", "accuracy", "timing")


def sample_test_images(samples: Any, size: int, count: int = 8) -> tuple[torch.Tensor, list]:  # ruff: ignore[any-type] - a DataFrame
    """``count`` test images spread over the samples (so over the defect types): resized batch and raw RGB arrays."""
    from anomalib_ext.data.mvtec_like import read_resized, read_rgb

    paths = samples.image_path.tolist()
    picks = [paths[i * len(paths) // count] for i in range(count)]
    return torch.cat([read_resized(p, (size, size)) for p in picks]), [read_rgb(p) for p in picks]


def torch_timings(model: AnomalibModule, batch: torch.Tensor, repeats: int) -> dict[str, float]:
    """Eager latency at batch 1 (model call; end to end with host steps; host steps alone) and batch-8 throughput."""
    from anomalib_ext.deploy.timing import median_ms
    from anomalib_ext.host_steps import host_steps_of, predict_end_to_end

    model.eval()
    one, eight = batch[:1], batch[:8]
    steps = host_steps_of(model)
    with torch.no_grad():
        row = {"torch_ms": median_ms(lambda: model(one), repeats)}
        row["torch_e2e_ms"] = median_ms(lambda: predict_end_to_end(model, one), repeats)
        row["host_ms"] = median_ms(lambda: steps.prepare(one), repeats) if steps else 0.0
        row["torch_images_per_s_b8"] = 8000 / median_ms(lambda: model(eight), max(3, repeats // 8))
    return row


TIMING_COLUMNS = {
    "latency_ms_b1": "ms",
    "e2e_ms": "e2e_ms",
    "images_per_s_b8": "images_per_s_b8",
    "openvino_precision": "precision",
}


def openvino_row(
    folders: dict[str, Path],
    test_samples: Any,  # ruff: ignore[any-type] - a samples DataFrame, or None when only timing
    raw_images: list,
    *,
    accuracy: bool,
    timing: bool,
    repeats: int,
    simulate_int8: bool = False,
) -> dict[str, Any]:
    """FP32/INT8 accuracy and interleaved latencies as ``ov_fp32_*`` / ``ov_int8_*`` (/ ``ov_int8_sim_*``) columns.

    See :func:`~anomalib_ext.deploy.evaluate.compare_exports`.
    """
    from anomalib_ext.deploy.evaluate import compare_exports

    names = {"ov_fp32": "FP32", "ov_int8": "INT8"}
    report = compare_exports(
        {names[k]: v for k, v in folders.items()},
        test_samples,
        raw_images,
        accuracy=accuracy,
        timing=timing,
        repeats=repeats,
        simulate_int8=simulate_int8,
    )
    row: dict[str, Any] = {"int8_kernel": report["measured_on"]["int8_kernel"]}
    for prefix, name in {**names, "ov_int8_sim": "INT8_simulated"}.items():
        for key, value in report.get(name, {}).items():
            row[f"{prefix}_{TIMING_COLUMNS.get(key, key)}"] = value
    if timing:
        row["ov_timing"] = "interleaved"
    return row


def _host_step_report(model: AnomalibModule) -> dict[str, Any]:
    from anomalib_ext.host_steps import host_steps_of

    report: dict[str, Any] = {}
    for step in host_steps_of(model):
        report.update(step.report())
    fallback = getattr(model, "fallback_reason", None)  # models that can fall back say why (AMFS: a global bank)
    if fallback is not None:
        report["fallback"] = fallback
    return report


def run_job(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one job (see the module docstring); its work files go to ``out/work/<name>``."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext import register
    from anomalib_ext.components import use_fast_coreset

    register()
    if job.get("fast_coreset", True):
        use_fast_coreset()  # Patchcore's coreset with our exact greedy k-center (same algorithm, ~14x faster)
    stages = set(job.get("stages", STAGES))
    unknown = stages - set(STAGES)
    if unknown:
        msg = f"Unknown benchmark stages {sorted(unknown)}; known: {STAGES}"
        raise ValueError(msg)
    seed = job.get("seed", 0)
    seed_everything(seed)
    size, repeats = job["size"], job.get("repeats", 20)
    model = build_model(job["model"], size=size, seed=seed, evaluator=default_evaluator())
    data = build_datamodule(job["data"])
    work = out / "work" / job["name"]
    engine = Engine(default_root_dir=work, logger=False, enable_progress_bar=False, accelerator="cpu")
    row: dict[str, Any] = {"seed": seed}
    start = time.perf_counter()
    engine.fit(model=model, datamodule=data)
    row["fit_s"] = time.perf_counter() - start
    if "test" in stages:
        row.update({k: float(v) for k, v in engine.test(model=model, datamodule=data, verbose=False)[0].items()})
        for subset, overrides in job.get("subsets", {}).items():
            metrics = engine.test(model=model, datamodule=build_datamodule(job["data"], **overrides), verbose=False)[0]
            row.update({f"{subset}_{k}": float(v) for k, v in metrics.items()})
    row.update(_host_step_report(model))
    test_samples = data.test_data.samples  # honours subsets (defect_types, max_defect_area)
    batch, raw = sample_test_images(test_samples, size)
    if "timing" in stages:
        row.update(torch_timings(model, batch, repeats))
    folders = _deploy(job, model, data, work, stages)
    if folders and stages & {"accuracy", "timing"}:
        row.update(
            openvino_row(
                folders,
                test_samples,
                raw,
                accuracy="accuracy" in stages,
                timing="timing" in stages,
                repeats=repeats,
                simulate_int8=job.get("int8_simulated", False),
            ),
        )
    row["torch_threads"] = torch.get_num_threads()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def _export_folder(work: Path, prefix: str) -> Path:
    """Where a job keeps its ``ov_fp32`` / ``ov_int8`` export: ``work/openvino_fp32`` / ``work/openvino_int8``."""
    return work / f"openvino_{prefix.removeprefix('ov_')}"


def _deploy(job: dict[str, Any], model: AnomalibModule, data: Any, work: Path, stages: set[str]) -> dict[str, Path]:  # ruff: ignore[any-type]
    """The export folders the job's stages ask for: ``ov_fp32`` (export), ``ov_int8`` (int8)."""
    from anomalib_ext.deploy.export import export_openvino
    from anomalib_ext.deploy.quantize import quantize_openvino

    folders: dict[str, Path] = {}
    if not stages & {"export", "int8"}:
        return folders
    size = job["size"]
    folders["ov_fp32"] = export_openvino(model, _export_folder(work, "ov_fp32"), (size, size)).parent
    if "int8" in stages:
        train_good = Path(data.root) / data.category / "train" / "good"  # INT8 calibration: normal training images
        xml = quantize_openvino(
            folders["ov_fp32"],
            train_good,
            _export_folder(work, "ov_int8"),
            subset_size=job.get("int8_subset_size", 300),
            target=job.get("int8_target", "any"),
        )
        folders["ov_int8"] = xml.parent
    return folders


def retime(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Measure the OpenVINO latencies of a finished job again, from its saved IRs (no training)."""
    from anomalib_ext.data.mvtec_like import make_mvtec_like_samples

    data = build_datamodule(job["data"])
    samples = make_mvtec_like_samples(Path(data.root) / data.category)
    _, raw = sample_test_images(samples[samples.split == "test"], job["size"])
    work = out / "work" / job["name"]
    folders = {name: _export_folder(work, name) for name in ("ov_fp32", "ov_int8")}
    folders = {name: folder for name, folder in folders.items() if folder.is_dir()}
    return openvino_row(folders, None, raw, accuracy=False, timing=True, repeats=job.get("repeats", 20))
