"""Deployment on tiny SyntheticGPD, model-independent parts: the batched inferencer's per-file errors,
failed exports, calibration errors and the command line. What every model must do (export, parity,
INT8, checkpoint export, seeds) is the model contract: tests/contract/test_model_contract.py."""

import json
import shutil

import numpy as np
import pytest

SIZE = 128


def _model(name):
    from anomalib_ext.benchmarking import build_model

    return build_model(f"configs/models/{name.lower()}_tiny.yaml", size=SIZE)


@pytest.fixture(scope="module", params=["Patchcore", "Padim"])
def exported(request, tiny_datamodule, tmp_path_factory):
    from anomalib.engine import Engine

    from anomalib_ext.deploy import export_openvino

    model = _model(request.param)
    root = tmp_path_factory.mktemp(request.param)
    engine = Engine(default_root_dir=root, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=tiny_datamodule())
    xml = export_openvino(model, root / "openvino")
    return request.param, model, xml.parent, engine


@pytest.mark.parametrize("exported", ["Padim"], indirect=True)  # model-independent: one model is enough
def test_quantize_refuses_without_calibration_data(exported, tmp_path):
    from anomalib_ext.deploy.quantize import CalibrationDataError, quantize_openvino

    _, _, folder, _ = exported
    with pytest.raises(CalibrationDataError, match="train/good"):
        quantize_openvino(folder, tmp_path / "no_such_folder", tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


@pytest.mark.parametrize("exported", ["Padim"], indirect=True)  # model-independent: one model is enough
def test_inferencer_reports_bad_inputs_and_runs_the_rest(exported, tiny_gpd, tmp_path):
    from anomalib_ext.deploy import Inferencer
    from anomalib_ext.export_format import ModelFilesError, ModelVersionError

    _, _, folder, _ = exported
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    good = sorted((tiny_gpd / "p001" / "test" / "good").glob("*.jpg"))[:2]
    inferencer = Inferencer(folder)
    predictions, errors = inferencer.predict_paths([good[0], corrupt, good[1]], batch_size=2, progress=False)
    assert [p.path for p in predictions] == [str(good[0]), str(good[1])]
    assert len(errors) == 1 and "corrupt.png" in errors[0]
    assert all(p.time_ms > 0 for p in predictions)
    with pytest.raises(ValueError, match="expected an RGB image"):
        inferencer.predict_arrays([np.zeros((SIZE, SIZE, 4), np.uint8)], names=["rgba.png"])

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "model.bin").unlink()
    with pytest.raises(ModelFilesError, match="model.bin"):
        Inferencer(broken)
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    metadata = json.loads((old / "metadata.json").read_text())
    metadata["format_version"] = 99
    (old / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelVersionError, match="Re-export"):
        Inferencer(old)
    (old / "metadata.json").unlink()
    with pytest.raises(ModelFilesError, match="anomalib-ext export"):
        Inferencer(old)


@pytest.mark.parametrize("exported", ["Padim"], indirect=True)
def test_failed_export_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    from anomalib_ext.deploy import export

    _, model, _, _ = exported

    def disk_full(*args, **kwargs):
        msg = "No space left on device"
        raise OSError(msg)

    monkeypatch.setattr(export, "write_export_metadata", disk_full)
    with pytest.raises(OSError, match="No space"):
        export.export_openvino(model, tmp_path / "out" / "openvino")
    assert list((tmp_path / "out").iterdir()) == []  # neither the export nor its staging folder


@pytest.mark.parametrize("exported", ["Patchcore"], indirect=True)  # one model is enough for the command line
def test_cli_export_quantize_infer(exported, tiny_gpd, tmp_path):
    from anomalib_ext.cli import main

    name, _, _, engine = exported
    ckpt = engine.trainer.checkpoint_callback.best_model_path
    assert main(["export", "--model", name, "--ckpt_path", ckpt, "--output", str(tmp_path / "fp32")]) == 0
    assert (
        main([
            "quantize",
            "--model-dir",
            str(tmp_path / "fp32"),
            "--calibration",
            str(tiny_gpd / "p001/train/good"),
            "--output",
            str(tmp_path / "int8"),
            "--eval-data",
            str(tiny_gpd / "p001"),
        ])
        == 0
    )
    report = json.loads((tmp_path / "int8" / "quantization_report.json").read_text())
    assert report["FP32"]["latency_ms_b1"] > 0 and report["INT8"]["latency_ms_b1"] > 0
    assert report["image_AUROC_change"] == report["INT8"]["image_AUROC"] - report["FP32"]["image_AUROC"]
    assert report["calibration_images"] == 6
    assert 0.5 < report["FP32"]["pixel_AUROC"] <= 1.0
    assert (
        main([
            "infer",
            "--model-dir",
            str(tmp_path / "int8"),
            "--input",
            str(tiny_gpd / "p001/test/hole"),
            str(tiny_gpd / "p001/test/good/*.jpg"),
            "--output",
            str(tmp_path / "out"),
            "--timing",
        ])
        == 0
    )
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,status,score,label,time_ms,error" and len(rows) == 1 + 2 + 3
    assert all(",ok," in row for row in rows[1:])
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 5
