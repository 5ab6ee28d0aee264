"""A benchmark grid: models x datasets x sizes x seeds from a YAML file -> jobs, then CSV, markdown and plots.

Grid keys: ``models`` and ``datasets`` (name -> spec, see :mod:`anomalib_ext.benchmarking.build`; a
dataset may say ``skip_if_missing: PATH`` and give its own ``sizes`` and ``subsets``; a model may list
the ``datasets`` it runs on, e.g. an aligned model on the garment sets only), ``sizes``
([256]), ``seeds`` ([0]; or ``seed``), ``stages`` (all of :data:`~anomalib_ext.benchmarking.jobs.STAGES`),
``subsets`` (name -> datamodule overrides tested after the full test set), ``repeats`` (20),
``int8_subset_size`` (300), ``int8_target`` (``any``; or ``vnni``), ``int8_simulated`` (false: also score
INT8 with its quantisation simulated in f32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalib_ext.benchmarking.build import REPO
from anomalib_ext.benchmarking.jobs import STAGES


def expand(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One job per (model, dataset, size, seed), named ``<model>__<dataset>__<size>[__s<seed>]``."""
    seeds = config.get("seeds", [config.get("seed", 0)])
    jobs = []
    for data_name, data in config["datasets"].items():
        missing = data.get("skip_if_missing")
        if missing and not (Path(missing).exists() or (REPO / missing).exists()):
            print(f"dataset {data_name}: {missing} is not present, skipped")
            continue
        spec = {k: v for k, v in data.items() if k not in {"skip_if_missing", "sizes", "subsets"}}
        for size in data.get("sizes", config.get("sizes", [256])):
            for model_name, model_entry in config["models"].items():
                if "datasets" in model_entry and data_name not in model_entry["datasets"]:
                    continue
                model = {k: v for k, v in model_entry.items() if k != "datasets"}
                for seed in seeds:
                    suffix = f"__s{seed}" if len(seeds) > 1 else ""
                    jobs.append({
                        "name": f"{model_name}__{data_name}__{size}{suffix}",
                        "model_name": model_name,
                        "dataset": data_name,
                        "size": size,
                        "seed": seed,
                        "model": model,
                        "data": spec,
                        "stages": config.get("stages", list(STAGES)),
                        "subsets": data.get("subsets", config.get("subsets", {})),
                        "repeats": config.get("repeats", 20),
                        "int8_subset_size": config.get("int8_subset_size", 300),
                        "int8_target": config.get("int8_target", "any"),
                        "int8_simulated": config.get("int8_simulated", False),
                    })
    return jobs


COLUMNS = {  # results.md: column -> header (those present)
    "image_AUROC": "img AUROC",
    "pixel_AUROC": "px AUROC",
    "pixel_AUPRO": "AUPRO",
    "pixel_AUPR": "px AP",
    "image_F1Score": "F1",
    "fit_s": "fit s",
    "torch_ms": "torch ms",
    "ov_fp32_ms": "OV FP32 ms",
    "ov_int8_ms": "OV INT8 ms",
    "ov_speedup": "OV/torch",
    "int8_speedup": "INT8/FP32",
    "int8_image_auroc_change": "INT8 Δimg AUROC",
    "ov_int8_map_correlation_mean": "INT8 map corr",
    "ov_fp32_e2e_ms": "OV e2e ms",
    "ov_fp32_images_per_s_b8": "FP32 img/s b8",
    "ov_int8_images_per_s_b8": "INT8 img/s b8",
    "peak_rss_mb": "peak MB",
    "job_s": "job s",
}


def summarise(rows: list[dict[str, Any]], out: Path) -> None:
    """``results.csv`` (every job), ``results.md`` (main columns; mean ± std over seeds when several) and plots."""
    import pandas as pd

    table = pd.DataFrame(rows)
    if {"torch_ms", "ov_fp32_ms"} <= set(table):
        table["ov_speedup"] = table["torch_ms"] / table["ov_fp32_ms"]
    if {"ov_fp32_ms", "ov_int8_ms"} <= set(table):
        table["int8_speedup"] = table["ov_fp32_ms"] / table["ov_int8_ms"]
    if {"ov_int8_image_AUROC", "ov_fp32_image_AUROC"} <= set(table):
        table["int8_image_auroc_change"] = table["ov_int8_image_AUROC"] - table["ov_fp32_image_AUROC"]
    table.to_csv(out / "results.csv", index=False)
    metric_columns = [
        c for c in table if c.endswith(("_AUROC", "_AUPRO", "_AUPR", "_F1Score")) and not c.startswith("ov_")
    ]
    shown_columns = list(dict.fromkeys([c for c in COLUMNS if c in table] + metric_columns))
    keys = ["dataset", "model_name", "size"]
    if table["seed"].nunique() > 1:  # ruff: ignore[pandas-nunique-constant-series-check] - several seeds, not a constant check
        grouped = table.groupby(keys, sort=False)[shown_columns]
        mean, std, count = grouped.mean(), grouped.std(), grouped.size()
        shown = mean.map(lambda v: f"{v:.3f}").astype(str) + " ± " + std.map(lambda v: f"{v:.3f}").astype(str)
        shown.insert(0, "seeds", count)
        text = shown.reset_index().rename(columns={**COLUMNS, "model_name": "model"}).to_markdown(index=False)
    else:
        shown = table[keys + shown_columns].rename(columns={**COLUMNS, "model_name": "model"})
        text = shown.to_markdown(index=False, floatfmt=".3f")
    (out / "results.md").write_text(text + "\n")
    if {"ov_fp32_e2e_ms", "ov_int8_e2e_ms", "ov_int8_image_AUROC", "image_AUROC"} <= set(table):
        _plots(table, out)


def _plots(table: Any, out: Path) -> None:  # ruff: ignore[any-type] - a DataFrame
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (model, group), color in zip(
        table.groupby("model_name"),
        plt.rcParams["axes.prop_cycle"].by_key()["color"],
        strict=False,
    ):
        ax.scatter(group["ov_fp32_e2e_ms"], group["image_AUROC"], color=color, label=f"{model} (OV FP32)", s=40)
        ax.scatter(
            group["ov_int8_e2e_ms"],
            group["ov_int8_image_AUROC"],
            color=color,
            marker="x",
            label=f"{model} (OV INT8)",
            s=40,
        )
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
