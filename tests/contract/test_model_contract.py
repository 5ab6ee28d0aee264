"""The model contract: what every registered model (and anomalib's Patchcore and Padim, our baselines) must do.

A new model is covered by registering it (entry point ``anomalib_ext.models`` in pyproject.toml) and
adding ``configs/models/<name>_tiny.yaml``: a setting that trains on a 6-image 128 px SyntheticGPD in
seconds. Checked, per model (see docs/ADDING_A_MODEL.md):

1. anomalib's Engine fits and tests it (metrics in range, maps better than chance);
2. our OpenVINO export has a dynamic batch and valid metadata; batch 3 = three batches of 1, at the tiny
   size and at a larger, non-square one (256 x 512: another feature-grid shape, and 2048 patches per
   image, where anomalib's Patchcore search runs in chunks);
3. the Inferencer's output equals the model's end-to-end predict (host steps included), in f32;
4. INT8 (NNCF, backbone scope) runs and its maps stay correlated with FP32;
5. the Engine's checkpoint exports through ``anomalib-ext export`` to the same scores, and anomalib's own
   export route (``to_openvino``, what ``anomalib export`` calls) writes what ``anomalib-ext infer`` runs;
6. the same seed gives the same scores (a second training from scratch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomalib_ext._registry import registered_names

ROOT = Path(__file__).resolve().parents[2]
SIZE = 128
LARGE = (256, 512)  # (H, W)
BASELINES = ["Patchcore", "Padim"]
MODELS = registered_names()["models"] + BASELINES


def _tiny_config(name: str) -> Path:
    return ROOT / "configs" / "models" / f"{name.lower()}_tiny.yaml"


def _train(name, tiny_datamodule, root, size=SIZE):
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext.benchmarking import build_model

    seed_everything(0)
    model = build_model(_tiny_config(name), size=size, seed=0)
    engine = Engine(default_root_dir=root, logger=False, enable_progress_bar=False)
    datamodule = tiny_datamodule()
    engine.fit(model=model, datamodule=datamodule)
    return model, engine, datamodule


def _test_images(tiny_gpd, step=3):
    from anomalib_ext.data.mvtec_like import read_resized

    paths = sorted((tiny_gpd / "p001" / "test").rglob("*.jpg"))[::step]
    return torch.cat([read_resized(p, (SIZE, SIZE)) for p in paths])


@pytest.fixture(scope="module", params=MODELS)
def trained(request, tiny_datamodule, tmp_path_factory):
    from anomalib_ext.deploy import export_openvino

    root = tmp_path_factory.mktemp(request.param)
    model, engine, datamodule = _train(request.param, tiny_datamodule, root)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    folder = export_openvino(model, root / "openvino").parent
    return request.param, model, engine, metrics, folder


def test_every_model_has_a_tiny_config():
    missing = [name for name in MODELS if not _tiny_config(name).is_file()]
    assert not missing, f"add configs/models/<name>_tiny.yaml for {missing} (see docs/ADDING_A_MODEL.md)"


def test_engine_fits_and_tests(trained):
    _, _, _, metrics, _ = trained
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    assert metrics["pixel_AUROC"] > 0.6  # the tiny set's defects are large: any working detector finds them


def _assert_batch_is_dynamic(folder, size):
    """The IR's batch is declared and recorded dynamic, and batch 3 gives each image what it gets alone."""
    import openvino as ov

    from anomalib_ext.deploy import Inferencer
    from anomalib_ext.export_format import read_metadata

    assert read_metadata(folder)["input"]["batch"] == "dynamic"
    assert ov.Core().read_model(folder / "model.xml").inputs[0].get_partial_shape()[0].is_dynamic
    inferencer = Inferencer(folder)
    batch = np.random.default_rng(0).random((3, 3, *size), dtype=np.float32)
    together = inferencer.infer(batch)
    for i in range(3):
        alone = inferencer.infer(batch[i : i + 1])
        np.testing.assert_allclose(
            alone["pred_score"].ravel(),
            together["pred_score"].ravel()[i : i + 1],
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(alone["anomaly_map"][0], together["anomaly_map"][i], rtol=1e-4, atol=1e-4)


def test_export_has_a_dynamic_batch_and_metadata(trained):
    from anomalib_ext.export_format import read_metadata
    from anomalib_ext.host_steps import host_steps_of

    name, model, _, _, folder = trained
    metadata = read_metadata(folder)
    assert metadata["model"] == name and metadata["precision"] == "FP32" and metadata["input"]["size"] == [SIZE, SIZE]
    assert list(metadata["host_steps"]) == [step.name for step in host_steps_of(model)]
    assert set(metadata["files"]) <= {p.name for p in folder.iterdir()}
    _assert_batch_is_dynamic(folder, (SIZE, SIZE))


@pytest.fixture(scope="module", params=MODELS)
def trained_large(request, tiny_datamodule, tmp_path_factory):
    """The model trained and exported at :data:`LARGE` (fit and export only)."""
    from anomalib_ext.deploy import export_openvino

    root = tmp_path_factory.mktemp(f"{request.param}_large")
    model, _, _ = _train(request.param, tiny_datamodule, root, size=LARGE)
    return request.param, model, export_openvino(model, root / "openvino").parent


def test_export_has_a_dynamic_batch_at_a_larger_size(trained_large):
    _, _, folder = trained_large
    _assert_batch_is_dynamic(folder, LARGE)


def _assert_same_predictions(predictions, expected):
    for i, prediction in enumerate(predictions):
        score = float(expected.pred_score.reshape(-1)[i])
        assert abs(prediction.score - score) <= 1e-3 * max(1.0, abs(score))
        torch_map = expected.anomaly_map[i].reshape(-1).numpy()
        assert np.corrcoef(prediction.anomaly_map.ravel(), torch_map)[0, 1] > 0.99


def test_inferencer_equals_the_models_end_to_end_predict(trained, tiny_gpd):
    from anomalib_ext.deploy import Inferencer
    from anomalib_ext.host_steps import predict_end_to_end

    _, model, _, _, folder = trained
    images = _test_images(tiny_gpd)
    inferencer = Inferencer(folder)
    # f32 even where OpenVINO would pick bf16 (CPUs with AMX): on one, bf16 moved scores by up to 0.09.
    assert "float32" in inferencer.inference_precision
    predictions = inferencer.predict_arrays([i.permute(1, 2, 0).numpy() for i in images])
    _assert_same_predictions(predictions, predict_end_to_end(model, images))


def test_int8_runs_and_keeps_the_maps(trained, tiny_gpd, tmp_path):
    """Backbone-scope INT8: maps stay close to FP32 (quantising the whole graph made them constant)."""
    from anomalib_ext.deploy import Inferencer, quantize_openvino
    from anomalib_ext.export_format import read_metadata

    _, _, _, _, folder = trained
    int8 = quantize_openvino(folder, tiny_gpd / "p001" / "train" / "good", tmp_path / "int8").parent
    metadata = read_metadata(int8)
    assert metadata["precision"] == "INT8" and metadata["quantization"]["calibration_images"] == 6
    assert metadata["host_steps"] == read_metadata(folder)["host_steps"]
    assert all((int8 / name).is_file() for name in read_metadata(folder)["files"])  # host-step files travel along
    images = [i.permute(1, 2, 0).numpy() for i in _test_images(tiny_gpd)]
    fp32_maps = [p.anomaly_map.ravel() for p in Inferencer(folder).predict_arrays(images)]
    int8_maps = [p.anomaly_map.ravel() for p in Inferencer(int8).predict_arrays(images)]
    correlations = [np.corrcoef(a, b)[0, 1] for a, b in zip(fp32_maps, int8_maps, strict=True)]
    assert np.nanmean(correlations) > 0.9


def test_checkpoint_exports_through_the_command_line(trained, tiny_gpd, tmp_path):
    from anomalib_ext.cli import main
    from anomalib_ext.deploy import Inferencer

    name, _, engine, _, folder = trained
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    assert main(["export", "--model", name, "--ckpt_path", checkpoint, "--output", str(tmp_path / "cli")]) == 0
    images = [i.permute(1, 2, 0).numpy() for i in _test_images(tiny_gpd)]
    direct = [p.score for p in Inferencer(folder).predict_arrays(images)]
    from_checkpoint = [p.score for p in Inferencer(tmp_path / "cli").predict_arrays(images)]
    np.testing.assert_allclose(from_checkpoint, direct, rtol=1e-4, atol=1e-5)


def test_anomalibs_own_export_route_writes_what_infer_runs(trained, tiny_gpd, tmp_path):
    """``anomalib export`` / ``model.to_openvino``: every plugin model also writes its host steps and metadata."""
    from anomalib_ext.deploy import Inferencer
    from anomalib_ext.export_format import read_metadata

    name, model, _, _, folder = trained
    if name in BASELINES:
        pytest.skip("anomalib's own models write no metadata.json: our export covers them")
    xml = model.to_openvino(tmp_path / "anomalib_route")
    metadata = read_metadata(xml.parent)
    assert metadata["model"] == name and metadata["host_steps"] == read_metadata(folder)["host_steps"]
    images = [i.permute(1, 2, 0).numpy() for i in _test_images(tiny_gpd)]
    direct = [p.score for p in Inferencer(folder).predict_arrays(images)]
    anomalib_route = [p.score for p in Inferencer(xml.parent).predict_arrays(images)]
    np.testing.assert_allclose(anomalib_route, direct, rtol=1e-4, atol=1e-5)


def test_same_seed_gives_the_same_scores(trained, tiny_gpd, tiny_datamodule, tmp_path):
    from anomalib_ext.host_steps import predict_end_to_end

    name, model, _, _, _ = trained
    again, _, _ = _train(name, tiny_datamodule, tmp_path)
    images = _test_images(tiny_gpd)
    first, second = predict_end_to_end(model, images), predict_end_to_end(again, images)
    assert torch.equal(first.pred_score, second.pred_score)
    assert torch.equal(first.anomaly_map, second.anomaly_map)


# anomalib's Patchcore is the model whose traced search the fix in anomalib_ext.export_fixes covers.
@pytest.mark.parametrize("trained_large", ["Patchcore"], indirect=True)
def test_a_graph_that_keeps_its_traced_batch_is_exported_with_a_fixed_batch(trained_large, tmp_path, monkeypatch):
    """Without the Patchcore tracing fix, the export's own check catches anomalib's traced chunk count.

    It exports a fixed batch instead of a "dynamic" one that crashes at inference, and the Inferencer
    then runs a batch of 3 one image at a time, with the results of the dynamic export.
    """
    import contextlib

    from anomalib_ext.deploy import Inferencer, export
    from anomalib_ext.export_format import read_metadata

    _, model, folder = trained_large
    monkeypatch.setattr(export, "traceable", lambda _model: contextlib.nullcontext())
    fixed = export.export_openvino(model, tmp_path / "unfixed").parent
    metadata = read_metadata(fixed)
    assert metadata["input"]["batch"] == 1 and "batch 3" in metadata["input"]["batch_note"]
    batch = np.random.default_rng(0).random((3, 3, *LARGE), dtype=np.float32)
    expected, got = Inferencer(folder).infer(batch), Inferencer(fixed).infer(batch)
    np.testing.assert_allclose(got["pred_score"], expected["pred_score"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["anomaly_map"], expected["anomaly_map"], rtol=1e-4, atol=1e-4)
