"""AMFS end to end on tiny SyntheticGPD: anomalib Engine fit/test, alignment, scoring modes, export."""

import numpy as np
import pytest
import torch


def _amfs(**kwargs):
    from anomalib_ext.models import AMFS

    defaults = {
        "backbone": "tf_efficientnet_lite0",
        "layers": ("blocks.2", "blocks.4"),
        "coreset_sampling_ratio": 0.1,
        "fusion_epochs": 5,
        "fusion_samples_per_image": 2,
        "pre_processor": AMFS.configure_pre_processor((128, 128)),
    }
    return AMFS(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def trained(tiny_datamodule, tmp_path_factory):
    from anomalib.engine import Engine

    model = _amfs()
    engine = Engine(default_root_dir=tmp_path_factory.mktemp("amfs"), logger=False, enable_progress_bar=False)
    datamodule = tiny_datamodule()
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    return model, engine, datamodule, metrics


def test_engine_trains_and_tests(trained):
    model, _, _, metrics = trained
    assert model.model.memory.bank.shape[0] == 21 and model.model.memory.bank.shape[1] > 0
    # holdout_to_banks: after F_fusion, the banks hold a coreset of all 5 non-reference images.
    patches = model.model.embed(torch.rand(1, 3, 128, 128))[0].shape[2]
    assert model.model.memory.bank.shape[1] == int(5 * patches * 0.1)
    assert model.model.reference.shape == (128, 128, 3)
    assert 0.0 <= metrics["image_AUROC"] <= 1.0 and metrics["pixel_AUROC"] > 0.6


def test_maps_come_back_in_the_input_frame(trained, tiny_gpd):
    model, _, _, _ = trained
    from anomalib_ext.data.mvtec_like import read_resized

    image = read_resized(tiny_gpd / "p001/test/hole/000.jpg", (128, 128))
    model.eval()
    out = model.predict_raw(image)
    assert out["anomaly_map"].shape == (1, 1, 128, 128)
    aligned, states = model.host_steps().prepare(image)
    (homography,) = states[0]
    direct = model.model(aligned).anomaly_map
    assert not np.allclose(homography, np.eye(3)) or torch.allclose(direct, out["anomaly_map"])


def test_eval_forward_exports_with_a_dynamic_batch(trained):
    model, _, _, _ = trained
    network = model.model.eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(network, (torch.rand(2, 3, 128, 128),), dynamic_shapes=({0: batch},), strict=False)
    for n in (1, 3):
        x = torch.rand(n, 3, 128, 128)
        expected = network(x)
        got = program.module()(x)
        assert torch.allclose(got.pred_score, expected.pred_score, atol=1e-4)
        assert torch.allclose(got.anomaly_map, expected.anomaly_map, atol=1e-4)


@pytest.mark.parametrize("scoring", ["max", "mean", "linear", "fusion_softmax"])
def test_other_scoring_modes_and_no_alignment(tiny_datamodule, tmp_path, scoring):
    from anomalib.engine import Engine

    model = _amfs(scoring=scoring, align=False, levels=2)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=tiny_datamodule())
    assert model.model.memory.bank.shape[0] == 5
    scores = model.model(torch.rand(2, 3, 128, 128)).pred_score
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_anomalib_export_route_also_runs_in_our_inferencer(trained, tiny_gpd, tmp_path):
    """`anomalib export` / Engine.export (ONNX route) writes our metadata and host files too."""
    from anomalib.deploy import ExportType

    from anomalib_ext.deploy import Inferencer, run_inference

    model, engine, _, _ = trained
    engine.export(model=model, export_type=ExportType.OPENVINO, export_root=tmp_path / "export", input_size=(128, 128))
    xml = next((tmp_path / "export").rglob("model.xml"))
    assert (xml.parent / "metadata.json").is_file() and (xml.parent / "align_reference.png").is_file()
    from anomalib_ext.data.mvtec_like import read_resized

    paths = sorted((tiny_gpd / "p001" / "test").rglob("*.jpg"))[::4]
    images = torch.cat([read_resized(p, (128, 128)) for p in paths])
    expected = model.predict_end_to_end(images)
    predictions = Inferencer(xml.parent).predict_arrays([i.permute(1, 2, 0).numpy() for i in images])
    for i, prediction in enumerate(predictions):
        assert abs(prediction.score - float(expected.pred_score[i])) <= 1e-3 * max(
            1.0,
            abs(float(expected.pred_score[i])),
        )
        assert np.corrcoef(prediction.anomaly_map.ravel(), expected.anomaly_map[i].numpy().ravel())[0, 1] > 0.99
    results = run_inference(xml.parent, tiny_gpd / "p001" / "test" / "hole", tmp_path / "out")
    assert [r.error for r in results] == [None, None]
    assert len(list((tmp_path / "out" / "overlays").glob("*.jpg"))) == 2
