"""tools/benchmark.py on a one-job grid (Padim, tiny SyntheticGPD, 128 px): every output and field."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_grid_writes_tables_plots_and_consistent_numbers(tiny_gpd, tmp_path):
    config = {
        "sizes": [128],
        "repeats": 3,
        "int8_subset_size": 6,
        "models": {
            "Padim": {
                "class_path": "anomalib.models.Padim",
                "init_args": {
                    "backbone": "tf_efficientnet_lite0",
                    "layers": ["blocks.2", "blocks.4"],
                    "n_features": 50,
                },
            },
        },
        "datasets": {
            "tiny": {
                "class_path": "anomalib_ext.data.SyntheticGPD",
                "init_args": {
                    "root": str(tiny_gpd),
                    "category": "p001",
                    "num_categories": 1,
                    "generated_size": 128,
                    "train_count": 6,
                    "test_good_count": 3,
                    "defects_per_type": 2,
                    "num_workers": 0,
                },
            },
        },
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(ROOT / "tools" / "benchmark.py"),
        "--config",
        str(tmp_path / "grid.yaml"),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("results.csv", "results.md", "auroc_vs_latency.png", "image_auroc_by_dataset.png", "machine.json"):
        assert (out / name).stat().st_size > 0, name
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["job"] == "Padim__tiny__128"
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPR", "image_F1Score", "ov_int8_image_AUROC"):
        assert 0.0 <= row[metric] <= 1.0, metric
    # The deployed FP32 IR scores the test set like the torch model anomalib evaluated.
    assert abs(row["ov_fp32_image_AUROC"] - row["image_AUROC"]) < 1e-3
    assert abs(row["ov_fp32_pixel_AUROC"] - row["pixel_AUROC"]) < 1e-3
    for timing in (
        "torch_ms",
        "ov_fp32_ms",
        "ov_int8_ms",
        "ov_fp32_e2e_ms",
        "ov_fp32_images_per_s_b8",
        "peak_rss_mb",
        "fit_s",
    ):
        assert row[timing] > 0, timing
    assert abs(row["ov_speedup"] - row["torch_ms"] / row["ov_fp32_ms"]) < 1e-6 * row["ov_speedup"]
    assert "Padim" in (out / "results.md").read_text()
    assert json.loads((out / "machine.json").read_text())["cores"] >= 1
    # A finished job is kept, not run again.
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "done before, kept" in again.stdout
    retimed = subprocess.run([*command, "--retime"], capture_output=True, text=True, timeout=300, check=False)
    assert retimed.returncode == 0 and "retimed" in retimed.stdout, retimed.stdout[-2000:] + retimed.stderr[-2000:]
    assert pd.read_csv(out / "results.csv").iloc[0]["ov_timing"] == "interleaved"
