"""AMFS end to end on tiny SyntheticGPD: anomalib Engine fit/test, alignment, matching and scoring modes,
the global-bank fallback, export."""

import numpy as np
import pytest
import torch


def _amfs(**kwargs):
    from anomalib_ext.models import AMFS

    defaults = {
        "backbone": "tf_efficientnet_lite0",
        "layers": ("blocks.2", "blocks.4"),
        "coreset_sampling_ratio": 0.1,
        "fusion": {"epochs": 5, "samples_per_image": 2},
        "matching": "blocks",  # the paper's A-MES unless a test says otherwise
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


def test_positional_matching_keeps_every_aligned_training_image(tiny_datamodule, tmp_path):
    from anomalib.engine import Engine

    model = _amfs(matching="positional", positional={"min_images": 3})
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=tiny_datamodule())
    assert model.fallback_reason == "" and not model.model.uses_global_bank
    features = model.model.embed_full(torch.rand(1, 3, 128, 128))
    # (h*w, D, N): all 6 training images (the reference included), every position; no block banks
    assert tuple(model.model.positional.features.shape) == (features.shape[2] * features.shape[3], features.shape[1], 6)
    assert model.model.memory.bank.numel() == 0
    assert [step.name for step in model.host_steps().steps] == ["align"]
    scores = model.model.eval()(torch.rand(2, 3, 128, 128)).pred_score
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_too_few_images_fall_back_to_a_global_bank_recorded_in_the_checkpoint(tiny_datamodule, tmp_path, caplog):
    from anomalib.engine import Engine

    from anomalib_ext.deploy.checkpoint import load_model

    model = _amfs(matching="positional")  # positional min_images=8 > the 6 training images
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with caplog.at_level("WARNING"):
        engine.fit(model=model, datamodule=tiny_datamodule())
    assert "falls back to a global memory bank" in caplog.text
    assert model.model.uses_global_bank and "only 6 training images" in model.fallback_reason
    assert model.model.positional.num_images == 0 and model.model.memory.bank.numel() == 0
    assert not model.host_steps()  # PatchCore behaviour: no alignment at inference
    checkpoint_path = next(tmp_path.rglob("*.ckpt"))
    assert "only 6 training images" in torch.load(checkpoint_path, weights_only=False)["amfs_fallback"]
    restored = load_model("AMFS", checkpoint_path)
    assert restored.model.uses_global_bank and restored.fallback_reason == model.fallback_reason
    x = torch.rand(2, 3, 128, 128)
    assert torch.allclose(restored.model.eval()(x).pred_score, model.model.eval()(x).pred_score)


def test_images_that_do_not_register_fall_back_to_a_global_bank():
    # Unrelated noise images: nothing to align to, so positional banks would compare unrelated places.
    model = _amfs(matching="positional", positional={"min_images": 3})
    rng = np.random.default_rng(0)
    noise = [torch.from_numpy(rng.integers(0, 255, (3, 128, 128), dtype=np.uint8)) for _ in range(8)]
    model._train_images = [(f"{i}.png", image) for i, image in enumerate(noise)]
    model.fit()
    assert model.model.uses_global_bank and "could not be aligned" in model.fallback_reason


def test_positional_matching_draws_nothing_at_random(tiny_gpd):
    # Its seeds give identical models: the benchmark reports positional AMFS from one seed for that reason.
    from anomalib_ext.data.mvtec_like import read_resized

    paths = sorted((tiny_gpd / "p001" / "train").rglob("*.jpg"))
    images = [(str(p), (read_resized(p, (128, 128))[0] * 255).round().to(torch.uint8)) for p in paths]
    test = torch.cat([read_resized(p, (128, 128)) for p in sorted((tiny_gpd / "p001" / "test").rglob("*.jpg"))[:4]])
    outputs = []
    for seed in (0, 1):
        model = _amfs(matching="positional", positional={"min_images": 3}, seed=seed)
        model._train_images = list(images)
        model.fit()
        outputs.append(model.predict_raw(test))
    assert torch.equal(outputs[0]["pred_score"], outputs[1]["pred_score"])
    assert torch.equal(outputs[0]["anomaly_map"], outputs[1]["anomaly_map"])


def test_aligned_patchcore_aligns_photographs_of_one_print_and_warps_maps_back():
    from anomalib_ext import register
    from anomalib_ext.data.garment_print import make_design, photograph, render_design
    from anomalib_ext.models import AlignedPatchcore, aligned

    register()  # offline lite0 weights for anomalib's own feature extractor
    design = make_design(np.random.default_rng(3), 256)
    shots = []
    for i in range(6):
        rng = np.random.default_rng([3, i])
        shots.append(photograph(*render_design(design, rng, None), design, rng)[0])
    images = torch.from_numpy(np.stack(shots).transpose(0, 3, 1, 2).astype(np.float32))
    model = AlignedPatchcore(
        backbone="tf_efficientnet_lite0",
        layers=["blocks.2", "blocks.4"],
        pre_processor=AlignedPatchcore.configure_pre_processor((256, 256)),
    )
    model._set_reference(list(images[:4]))
    aligned_images, states = model.host_steps().prepare(images)
    aligner = model.host_steps().steps[0].aligner
    assert aligner.failures == 0 and aligner.total == 6
    reference = torch.from_numpy(model.align_reference.numpy()).permute(2, 0, 1).float() / 255
    # aligned photographs match the reference far better than the raw ones (centre: no border fill)
    before = (images - reference).abs()[..., 32:-32, 32:-32].mean()
    after = (aligned_images - reference).abs()[..., 32:-32, 32:-32].mean()
    assert after < 0.7 * before
    maps = model.host_steps().restore(torch.ones(6, 1, 256, 256), states)
    assert maps.shape == (6, 1, 256, 256)
    from anomalib.models import Patchcore

    built = aligned(Patchcore)(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"])
    assert type(built).__name__ == "AlignedPatchcore" and isinstance(built, Patchcore)
    assert built.align_reference.numel() == 0 and built.reference_mode == "best"
