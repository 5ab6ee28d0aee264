"""Deployment on tiny SyntheticGPD: export (dynamic batch, metadata), torch/OpenVINO parity for every
model we benchmark, NNCF INT8, the batched inferencer's per-file errors, and the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

SIZE = 128


def _model(name):
    from anomalib.models import Padim, Patchcore

    from anomalib_ext import register
    from anomalib_ext.models import AMFS

    register()  # offline lite0 weights for anomalib's models too
    common = {"backbone": "tf_efficientnet_lite0", "layers": ["blocks.2", "blocks.4"]}
    if name == "AMFS":
        return AMFS(**common, coreset_sampling_ratio=0.1, fusion_epochs=5, fusion_samples_per_image=2,
                    pre_processor=AMFS.configure_pre_processor((SIZE, SIZE)))
    if name == "Patchcore":
        return Patchcore(**common, coreset_sampling_ratio=0.1, pre_processor=Patchcore.configure_pre_processor((SIZE, SIZE)))
    return Padim(**common, n_features=50, pre_processor=Padim.configure_pre_processor((SIZE, SIZE)))


def _datamodule(root):
    from anomalib_ext.data import SyntheticGPD

    return SyntheticGPD(root=root, num_categories=1, generated_size=SIZE, train_count=6, test_good_count=3, defects_per_type=2,
                        train_batch_size=4, eval_batch_size=4, num_workers=0)


def _test_images(tiny_gpd, step=3):
    from anomalib_ext.data.mvtec_like import read_resized

    paths = sorted((tiny_gpd / "p001" / "test").rglob("*.jpg"))[::step]
    return torch.cat([read_resized(p, (SIZE, SIZE)) for p in paths])


def _torch_outputs(model, images):
    """What the torch model gives end to end: normalised scores and maps (host steps around the forward)."""
    from anomalib_ext.host_steps import predict_end_to_end

    return predict_end_to_end(model, images)


@pytest.fixture(scope="module", params=["AMFS", "Patchcore", "Padim"])
def exported(request, tiny_gpd, tmp_path_factory):
    from anomalib.engine import Engine

    from anomalib_ext.deploy import export_openvino

    model = _model(request.param)
    root = tmp_path_factory.mktemp(request.param)
    engine = Engine(default_root_dir=root, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=_datamodule(tiny_gpd))
    xml = export_openvino(model, root / "openvino")
    return request.param, model, xml.parent, engine


def test_export_writes_ir_with_dynamic_batch_and_metadata(exported):
    import openvino as ov

    from anomalib_ext.export_format import read_metadata

    name, _, folder, _ = exported
    metadata = read_metadata(folder)
    assert metadata["model"] == name and metadata["precision"] == "FP32"
    assert metadata["input"]["size"] == [SIZE, SIZE] and metadata["versions"]["anomalib_ext"]
    assert ov.Core().read_model(folder / "model.xml").inputs[0].get_partial_shape()[0].is_dynamic
    if name == "AMFS":
        assert (folder / metadata["host_steps"]["align"]["reference"]).is_file()
    else:  # anomalib's models normalise inside the graph; the metadata says with what
        assert metadata["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_openvino_fp32_matches_torch(exported, tiny_gpd):
    from anomalib_ext.deploy import Inferencer

    _, model, folder, _ = exported
    images = _test_images(tiny_gpd)
    expected = _torch_outputs(model, images)
    inferencer = Inferencer(folder)
    # f32 even where OpenVINO would pick bf16 (CPUs with AMX): on one, bf16 moved scores by up to 0.09.
    assert "float32" in inferencer.inference_precision
    predictions = inferencer.predict_arrays([i.permute(1, 2, 0).numpy() for i in images])
    for i, prediction in enumerate(predictions):
        score = float(expected.pred_score.reshape(-1)[i])
        assert abs(prediction.score - score) <= 1e-3 * max(1.0, abs(score))
        torch_map = expected.anomaly_map[i].reshape(-1).numpy()
        assert np.corrcoef(prediction.anomaly_map.ravel(), torch_map)[0, 1] > 0.99


def test_batch_of_three_equals_three_batches_of_one(exported):
    from anomalib_ext.deploy import Inferencer

    _, _, folder, _ = exported
    inferencer = Inferencer(folder)
    batch = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    together = inferencer.infer(batch)
    for i in range(3):
        alone = inferencer.infer(batch[i : i + 1])
        np.testing.assert_allclose(alone["pred_score"].ravel(), together["pred_score"].ravel()[i : i + 1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(alone["anomaly_map"][0], together["anomaly_map"][i], rtol=1e-4, atol=1e-4)


def test_int8_keeps_the_maps_and_the_host_files(exported, tiny_gpd, tmp_path):
    """Backbone-scope INT8: maps stay close to FP32 (quantising the whole graph made them constant)."""
    from anomalib_ext.deploy import Inferencer, quantize_openvino
    from anomalib_ext.export_format import read_metadata

    name, _, folder, _ = exported
    int8 = quantize_openvino(folder, tiny_gpd / "p001" / "train" / "good", tmp_path / "int8").parent
    metadata = read_metadata(int8)
    assert metadata["precision"] == "INT8" and metadata["quantization"]["calibration_images"] == 6
    if name == "AMFS":
        assert (int8 / "align_reference.png").is_file()
    images = [i.permute(1, 2, 0).numpy() for i in _test_images(tiny_gpd)]
    fp32_maps = [p.anomaly_map.ravel() for p in Inferencer(folder).predict_arrays(images)]
    int8_maps = [p.anomaly_map.ravel() for p in Inferencer(int8).predict_arrays(images)]
    correlations = [np.corrcoef(a, b)[0, 1] for a, b in zip(fp32_maps, int8_maps)]
    assert np.nanmean(correlations) > 0.9


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
        raise OSError("No space left on device")

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
    assert main(["quantize", "--model-dir", str(tmp_path / "fp32"), "--calibration", str(tiny_gpd / "p001/train/good"),
                 "--output", str(tmp_path / "int8"), "--eval-data", str(tiny_gpd / "p001")]) == 0
    report = json.loads((tmp_path / "int8" / "quantization_report.json").read_text())
    assert report["FP32"]["latency_ms_b1"] > 0 and report["INT8"]["latency_ms_b1"] > 0
    assert report["image_AUROC_change"] == report["INT8"]["image_AUROC"] - report["FP32"]["image_AUROC"]
    assert report["calibration_images"] == 6
    assert 0.5 < report["FP32"]["pixel_AUROC"] <= 1.0
    assert main(["infer", "--model-dir", str(tmp_path / "int8"), "--input", str(tiny_gpd / "p001/test/hole"),
                 str(tiny_gpd / "p001/test/good/*.jpg"), "--output", str(tmp_path / "out"), "--timing"]) == 0
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,status,score,label,time_ms,error" and len(rows) == 1 + 2 + 3
    assert all(",ok," in row for row in rows[1:])
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 5
