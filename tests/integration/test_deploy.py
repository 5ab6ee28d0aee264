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
    assert report["INT8"]["map_correlation_mean"] > 0.9  # the contract's parity guard, here through the report
    assert report["INT8"]["int8_arithmetic"] == "native"  # the default target runs natively on any CPU
    assert report["measured_on"]["int8_kernel"]
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


def _conv_weight_ranges(folder):
    """The largest |value| of the i8 weight constants feeding (non-grouped) convolutions, and of grouped ones."""
    import openvino as ov

    largest = {"Convolution": 0, "GroupConvolution": 0}
    for op in ov.Core().read_model(folder / "model.xml").get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.i8:
            continue
        node = op
        for _ in range(6):  # i8 constant -> Convert -> (Subtract) -> Multiply -> (Reshape) -> convolution
            node = next(iter(node.output(0).get_target_inputs())).get_node()
            if node.get_type_name() in largest:
                largest[node.get_type_name()] = max(largest[node.get_type_name()], int(np.abs(op.get_data()).max()))
                break
    return largest


@pytest.mark.parametrize("exported", ["Patchcore"], indirect=True)  # the model whose INT8 maps broke on AVX2
def test_int8_targets_any_cpu_by_default_and_vnni_on_request(exported, tiny_gpd, tmp_path, monkeypatch, caplog):
    """``any`` (default) has 7-bit convolution weights and runs the same natively as simulated, on this CPU
    whatever it is; ``vnni`` keeps 8-bit weights, is correct where its arithmetic is exact (simulated), and
    the Inferencer simulates it on a CPU without VNNI. No assertion depends on this CPU's instruction set."""
    from anomalib_ext.deploy import Inferencer, inferencer, quantize_openvino
    from anomalib_ext.deploy.cpu import int8_kernel
    from anomalib_ext.deploy.evaluate import agreement
    from anomalib_ext.export_format import read_metadata

    _, _, folder, _ = exported
    calibration = tiny_gpd / "p001" / "train" / "good"
    safe = quantize_openvino(folder, calibration, tmp_path / "any").parent
    vnni = quantize_openvino(folder, calibration, tmp_path / "vnni", target="vnni").parent
    quantization = read_metadata(safe)["quantization"]
    assert quantization["target_cpu"] == "any" and quantization["overflow_fix"] == "enable"
    assert quantization["calibrated_on"]["int8_kernel"] == int8_kernel()
    assert read_metadata(vnni)["quantization"]["target_cpu"] == "vnni"
    # 2 x 255 x 64 fits a signed 16-bit sum: the u8 x s7 pairs of a CPU without VNNI cannot saturate.
    # (Depthwise convolutions keep 8 bits: their kernels do not add pairs in 16 bits.)
    assert _conv_weight_ranges(safe)["Convolution"] <= 64 < _conv_weight_ranges(vnni)["Convolution"]

    images = [i.permute(1, 2, 0).numpy() for i in _images(tiny_gpd)]
    fp32 = Inferencer(folder).predict_arrays(images)
    native = Inferencer(safe, int8_arithmetic="native").predict_arrays(images)
    simulated = Inferencer(safe, int8_arithmetic="simulated").predict_arrays(images)
    assert agreement(simulated, native)["map_correlation_min"] > 0.999
    assert (
        agreement(fp32, Inferencer(vnni, int8_arithmetic="simulated").predict_arrays(images))["map_correlation_mean"]
        > 0.9
    )

    monkeypatch.setattr(inferencer, "has_int8_dot_product", lambda device="CPU": False)
    assert Inferencer(safe).int8_arithmetic == "native"
    with caplog.at_level("WARNING"):
        assert Inferencer(vnni).int8_arithmetic == "simulated"
    assert "--target any" in caplog.text
    older = tmp_path / "older"  # an INT8 export from before the target was recorded: NNCF's default, VNNI only
    shutil.copytree(vnni, older)
    metadata = json.loads((older / "metadata.json").read_text())
    del metadata["quantization"]["target_cpu"]
    (older / "metadata.json").write_text(json.dumps(metadata))
    assert Inferencer(older).int8_arithmetic == "simulated"
    assert Inferencer(folder).int8_arithmetic == "native"  # FP32: nothing to simulate
    monkeypatch.setattr(inferencer, "has_int8_dot_product", lambda device="CPU": True)
    assert Inferencer(vnni).int8_arithmetic == "native"


def _images(tiny_gpd):
    from anomalib_ext.data.mvtec_like import read_resized

    return [read_resized(p, (SIZE, SIZE))[0] for p in sorted((tiny_gpd / "p001" / "test").rglob("*.jpg"))[::3]]


@pytest.mark.parametrize("exported", ["Padim"], indirect=True)
def test_an_export_with_a_fixed_batch_runs_any_batch(exported, tmp_path):
    """A fixed-batch IR (what export writes when the graph keeps a traced batch) runs 5 images 2 at a time."""
    import openvino as ov

    from anomalib_ext.deploy import Inferencer

    _, _, folder, _ = exported
    fixed = tmp_path / "fixed"
    shutil.copytree(folder, fixed, ignore=shutil.ignore_patterns("model.*"))
    model = ov.Core().read_model(folder / "model.xml")  # not the copy: its .bin is memory-mapped while read
    model.reshape({0: [2, 3, SIZE, SIZE]})
    ov.save_model(model, fixed / "model.xml", compress_to_fp16=False)
    metadata = json.loads((fixed / "metadata.json").read_text())
    metadata["input"]["batch"] = 2
    (fixed / "metadata.json").write_text(json.dumps(metadata))
    batch = np.random.default_rng(0).random((5, 3, SIZE, SIZE), dtype=np.float32)
    expected, got = Inferencer(folder).infer(batch), Inferencer(fixed).infer(batch)
    assert got["anomaly_map"].shape == expected["anomaly_map"].shape
    np.testing.assert_allclose(got["pred_score"], expected["pred_score"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["anomaly_map"], expected["anomaly_map"], rtol=1e-4, atol=1e-4)
