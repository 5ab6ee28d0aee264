"""Benchmark grid: models x datasets x input sizes -> quality, speed and memory, as CSV, markdown and plots.

    python tools/benchmark.py --config configs/benchmark/default.yaml --out results/benchmark

Each job (model, dataset, size, seed) runs in its own process (so its peak memory is its own): the
job runner :mod:`anomalib_ext.benchmarking.jobs` (Engine fit -> test and subsets -> our OpenVINO
export -> NNCF INT8 -> accuracy of both IRs -> latencies; a grid may list fewer ``stages``, e.g. the
fit/test-only ablation grids). The grid's keys are in :mod:`anomalib_ext.benchmarking.grid`.
``*_e2e_ms`` include the host steps (resize from the stored image, AMFS alignment and warp back);
the others are the model / IR call alone; ``host_ms`` is the host steps alone. FP32 and INT8 are
timed interleaved (round by round), so a slow spell of a shared machine hits both alike;
``--retime`` measures the OpenVINO latencies of finished jobs again from their saved IRs.

Output in ``--out``: ``jobs/<job>.json`` (one per job; a finished job is not run again unless
``--rerun``), ``results.csv``, ``results.md``, ``auroc_vs_latency.png``, ``image_auroc_by_dataset.png``
and ``machine.json`` (CPU model, cores, thread counts, versions); with several seeds, ``results.md``
shows mean ± std over them.

Why not ``anomalib benchmark``: its pipeline runs fit + test only (no export, INT8 or latency), and its
collect step fails when the models' ``init_args`` keys differ (Padim's ``n_features`` vs Patchcore's
``coreset_sampling_ratio``). For plain fit/test grids it works with our models after ``register()``:
see ``configs/benchmark/amfs_vs_patchcore.yaml``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """CPU (ISA flags, OpenVINO's INT8 kernel), cores, thread counts and versions, stored beside the results."""
    import anomalib
    import torch

    from anomalib_ext.deploy.cpu import cpu_report

    return {
        **cpu_report(),
        "torch_threads": torch.get_num_threads(),
        "openvino_threads": "OpenVINO default (all cores)",
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "python": platform.python_version(),
    }


def run_child(args: argparse.Namespace) -> None:
    """Internal: run (or retime) one job file in this process and store its row."""
    from anomalib_ext.benchmarking.jobs import retime, run_job

    job = json.loads(args.job.read_text())
    result = args.out / "jobs" / f"{job['name']}.json"
    if args.retime:
        row = json.loads(result.read_text())
        row.update(retime(job, args.out))
    else:
        row = {"job": job["name"], "model_name": job["model_name"], "dataset": job["dataset"], "size": job["size"]}
        start = time.perf_counter()
        row.update(run_job(job, args.out))
        row["job_s"] = time.perf_counter() - start
    result.write_text(json.dumps(row, indent=1))


def main() -> None:
    """Run the grid (one child process per job), then write the tables and plots."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs/benchmark/default.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    parser.add_argument("--only", nargs="+", help="run only jobs whose name contains one of these strings")
    parser.add_argument("--rerun", action="store_true", help="run jobs again even when their result file exists")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="measure the OpenVINO latencies of finished jobs again from their saved IRs (interleaved FP32/INT8)",
    )
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # internal: run one job file in this process
    args = parser.parse_args()
    if args.job:
        run_child(args)
        return
    from anomalib_ext.benchmarking.grid import expand, summarise

    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    (args.out / "jobs").mkdir(parents=True, exist_ok=True)
    (args.out / "machine.json").write_text(json.dumps(machine(), indent=1))
    every_job = expand(config)
    jobs = [j for j in every_job if not args.only or any(s in j["name"] for s in args.only)]
    failed = []
    for index, job in enumerate(jobs, 1):
        result = args.out / "jobs" / f"{job['name']}.json"
        if args.retime and not result.is_file():
            print(f"[{index}/{len(jobs)}] {job['name']}: not run yet, nothing to retime", flush=True)
            continue
        if not args.retime and result.is_file() and not args.rerun:
            print(f"[{index}/{len(jobs)}] {job['name']}: done before, kept ({result})", flush=True)
            continue
        spec = args.out / "jobs" / f"{job['name']}.job"
        spec.write_text(json.dumps(job))
        print(f"[{index}/{len(jobs)}] {job['name']} ...", flush=True)
        start = time.perf_counter()
        command = [
            sys.executable,
            __file__,
            "--job",
            str(spec),
            "--out",
            str(args.out),
            *(["--retime"] if args.retime else []),
        ]
        code = subprocess.call(command, cwd=REPO)
        done = "retimed" if args.retime else "ok"
        print(
            f"[{index}/{len(jobs)}] {job['name']}: {done if code == 0 else f'FAILED (exit {code})'} in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        if code:
            failed.append(job["name"])
    # The tables cover every finished job of the grid, not only those this call ran (--only).
    rows = [
        json.loads(path.read_text()) for j in every_job if (path := args.out / "jobs" / f"{j['name']}.json").is_file()
    ]
    if rows:
        summarise(rows, args.out)
        print((args.out / "results.md").read_text())
    if failed:
        print(f"Failed jobs: {', '.join(failed)} (their logs are above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
