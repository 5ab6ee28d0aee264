"""The README's main job on tiny data: train -> test -> OpenVINO export -> OpenVINO inference."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "demo.py"),
            "--out",
            str(out),
            "--small",
            "--num-workers",
            "0",
            "--data-root",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == []
    assert summary["test_metrics"]["image_AUROC"] > 0.5  # it learned something, on 8 training images
    assert summary["test_metrics"]["pixel_AUROC"] > 0.8
    predictions = summary["openvino_predictions"]
    assert len(predictions) == 8
    assert len(list((out / "openvino_predictions" / "overlays").glob("*.jpg"))) == 8
    csv = (out / "openvino_predictions" / "scores.csv").read_text().splitlines()
    assert csv[0] == "path,status,score,label,error" and len(csv) == 9


def test_infer_names_what_is_missing(tmp_path):
    from anomalib_ext.deploy.inferencer import collect_images, resolve_model_dir
    from anomalib_ext.export_format import ModelFilesError

    with pytest.raises(ModelFilesError, match="model.xml is missing"):
        resolve_model_dir(tmp_path)
    with pytest.raises(ModelFilesError, match="does not exist"):
        resolve_model_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No images"):
        collect_images(tmp_path / "*.png")
