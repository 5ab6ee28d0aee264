"""PNIModel: fit on tiny images with a random backbone, the ablation switches, and the eval graph."""

import pytest
import torch


def _model(**kwargs):
    from anomalib_ext.models.pni.torch_model import PNIModel

    settings = {
        "embedding_ratio": 0.2,
        "distribution_size": 16,
        "neighborhood_size": 3,
        "score_bank": "distribution",
        "refine": False,
    }
    mlp = {"depth": 2, "width": 32, "projection": None, "epochs": 1, "batch_size": 64} | kwargs.pop("mlp", {})
    refiner = {"backbone": "tf_efficientnet_lite0", "scale": 1.0, "epochs": 1, "batch_size": 4} | kwargs.pop(
        "refiner", {}
    )
    settings |= kwargs
    return PNIModel("tf_efficientnet_lite0", pre_trained=False, mlp=mlp, refiner=refiner, **settings)


@pytest.fixture(scope="module")
def training():
    torch.manual_seed(0)
    images = 0.5 + 0.1 * torch.randn(6, 3, 64, 64)
    return images.clamp(0, 1)


def _fitted(training, **kwargs):
    model = _model(**kwargs).eval()
    with torch.no_grad():
        features = model.embedding(training)
    model.fit(features)
    images = (training * 255).round().to(torch.uint8)
    model.fit_refinement(images)  # nothing to do when refine=False
    return model.eval()


def test_fit_and_score(training):
    model = _fitted(training)
    assert model.score.targets.shape[0] == 16 and model.position.shape[0] == 16 and model.mlp is not None
    with torch.no_grad():
        out = model(training[:3])
        p = model.distributions(model.embedding(training[:2]))
    assert out.pred_score.shape == (3,) and out.anomaly_map.shape == (3, 1, 64, 64)
    assert torch.allclose(out.pred_score, out.anomaly_map.flatten(1).amax(1))
    assert torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-5)


def test_without_either_distribution_every_element_is_allowed(training):
    model = _fitted(training, use_neighborhood=False, use_position=False)
    assert model.mlp is None and model.position.numel() == 0
    with torch.no_grad():
        features = model.embedding(training[:2])
        patch = model.patch_scores(training[:2])
    nearest = torch.cdist(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), model.score.targets).amin(1)
    assert torch.allclose(patch.flatten(), nearest, atol=1e-3)


def test_position_only_and_neighbourhood_only(training):
    position_only = _fitted(training, use_neighborhood=False)
    neighbourhood_only = _fitted(training, use_position=False)
    assert position_only.mlp is None and position_only.position.numel()
    assert neighbourhood_only.mlp is not None and neighbourhood_only.position.numel() == 0
    with torch.no_grad():
        assert position_only(training[:1]).pred_score.isfinite().all()
        assert neighbourhood_only(training[:1]).pred_score.isfinite().all()


def test_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        _model()(torch.rand(1, 3, 64, 64))


def test_refinement_blends_a_tenth_of_the_refined_map_into_the_map(training):
    model = _fitted(training, refine=True)
    assert float(model.refiner.scale) > 0
    with torch.no_grad():
        coarse = model.coarse_map(training[:2])
        refined = model.refiner.refine(training[:2], coarse) * model.refiner.scale
        out = model(training[:2])
    assert torch.allclose(out.anomaly_map, 0.9 * coarse + 0.1 * refined, atol=1e-5)
    assert not torch.allclose(out.anomaly_map, coarse)
    assert torch.allclose(out.pred_score, out.anomaly_map.flatten(1).amax(1))
    model.image_score = "coarse"  # the refinement reshapes the map only
    with torch.no_grad():
        coarse_scored = model(training[:2])
    assert torch.allclose(coarse_scored.pred_score, coarse.flatten(1).amax(1))
    assert torch.allclose(coarse_scored.anomaly_map, out.anomaly_map)
    assert _fitted(training).refiner is None


class _Scores(torch.nn.Module):
    """The image scores of a PNIModel: a traceable module (parameters stay parameters, not constants)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images).pred_score


def _assert_traces_with_any_batch(model, images):
    with torch.no_grad():
        traced = torch.jit.trace(_Scores(model).eval(), images[:2], check_trace=False)
        assert torch.allclose(traced(images[:4]), model(images[:4]).pred_score, atol=1e-4)


@pytest.mark.parametrize("refine", [False, True])
def test_eval_graph_traces_with_any_batch(training, refine):
    _assert_traces_with_any_batch(_fitted(training, refine=refine), training)


def test_the_embedding_bank_scores_against_all_of_c_emb_traces_and_reloads(training):
    model = _fitted(training, score_bank="embedding", use_neighborhood=False, use_position=False)
    assert model.score.targets.shape[0] == int(6 * 8 * 8 * 0.2) and model.score.num_clusters == 16
    with torch.no_grad():
        features = model.embedding(training[:2])
        patch = model.patch_scores(training[:2])
    nearest = torch.cdist(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), model.score.targets).amin(1)
    assert torch.allclose(patch.flatten(), nearest, atol=1e-3)  # neither distribution: PatchCore on C_emb
    model = _fitted(training, score_bank="embedding")
    _assert_traces_with_any_batch(model, training)
    fresh = _model(score_bank="embedding").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(training[:2]).pred_score, model(training[:2]).pred_score)


def test_a_fitted_state_dict_loads_into_a_fresh_model(training):
    model = _fitted(training, refine=True)
    fresh = _model(refine=True).eval()
    fresh.load_state_dict(model.state_dict())
    assert not fresh.mlp.training  # the MLP rebuilt while loading follows the model's eval mode
    with torch.no_grad():
        assert torch.allclose(fresh(training[:2]).pred_score, model(training[:2]).pred_score)


def test_a_left_out_centre_block_fits_and_reloads(training):
    settings = {"neighborhood_size": 5, "mlp": {"centre_block": 3, "projection": 4}}
    model = _fitted(training, **settings)
    assert model.mlp.net[0].in_features == 4 * 16  # the 5 x 5 ring only
    fresh = _model(**settings).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(training[:2]).anomaly_map, model(training[:2]).anomaly_map)
    with pytest.raises(ValueError, match="centre block"):
        _model(neighborhood_size=3, mlp={"centre_block": 3})


def test_the_refiner_can_hold_out_images_and_stop_early(training):
    from anomalib_ext.models.pni.settings import RefinerSettings

    images = (training * 255).round().to(torch.uint8)
    schedule = {"epochs": 3, "batch_size": 2, "validation": 2, "patience": 1, "learning_rate": 1e-3}
    model = _fitted(training, refine=True, refiner=schedule)
    history = model.fit_refinement(images)
    assert 1 <= len(history.validation_loss) <= 3
    assert history.best_epoch == min(range(len(history.validation_loss)), key=history.validation_loss.__getitem__)
    model.refiner_settings = RefinerSettings(backbone="tf_efficientnet_lite0", epochs=1, batch_size=2)
    assert model.fit_refinement(images).validation_loss == []  # the paper's: none held out


def test_lightning_pni_hands_its_settings_groups_to_the_network():
    from anomalib_ext.models.pni.settings import NeighborhoodMLPSettings, RefinerSettings

    model = _lightning_pni(refiner={"validation": 2, "patience": 1, "epochs": 2}, mlp=NeighborhoodMLPSettings(depth=4))
    assert model.model.refiner_settings == RefinerSettings(
        backbone="tf_efficientnet_lite0", validation=2, patience=1, epochs=2
    )
    assert model.model.mlp_settings.depth == 4 and model.model.neighborhood_size == 3
    with pytest.raises(ValueError, match="RefinerSettings has no setting 'normal_share'"):
        _lightning_pni(refiner={"normal_share": 0.5})  # removed: measured no gain (README)


def test_lightning_and_torch_pni_share_every_default():
    import inspect

    from anomalib_ext.models import PNI
    from anomalib_ext.models.pni.torch_model import PNIModel

    network = inspect.signature(PNIModel).parameters
    shared = [name for name in inspect.signature(PNI).parameters if name in network]
    assert len(shared) == len(network)  # the network takes nothing the Lightning model does not
    for name in shared:
        assert inspect.signature(PNI).parameters[name].default == network[name].default, name


def test_mode_strings_are_checked_at_construction():
    with pytest.raises(ValueError, match="score_bank must be one of 'embedding', 'distribution'"):
        _model(score_bank="embeddings")


def _lightning_pni(**kwargs):
    from anomalib_ext.models import PNI

    refiner = {"backbone": "tf_efficientnet_lite0"} | kwargs.pop("refiner", {})
    return PNI(
        "tf_efficientnet_lite0",
        pre_trained=False,
        distribution_size=8,
        neighborhood_size=3,
        refiner=refiner,
        evaluator=False,
        visualizer=False,
        **kwargs,
    )


def test_one_training_image_is_refused_before_fitting():
    from anomalib.data import ImageBatch

    model = _lightning_pni()
    model.training_step(ImageBatch(image=torch.rand(1, 3, 32, 32)))
    with pytest.raises(ValueError, match="at least 2 normal training images, got 1"):
        model.fit()


def test_switching_a_part_off_after_fitting_equals_fitting_without_it(training):
    """experiments/pni/ablation.py scores every ablation variant from one fit; that relies on this."""

    def fitted(**kwargs):
        torch.manual_seed(1)  # the same random backbone for every model (with ImageNet weights it is given)
        return _fitted(training, **kwargs)

    full = fitted(refine=True)
    without_position = fitted(use_position=False)
    without_mlp = fitted(use_neighborhood=False)
    without_refine = fitted()
    with torch.no_grad():
        assert torch.equal(full.coarse_map(training), without_refine.coarse_map(training))
        position = full.position
        full.position = torch.empty(0)
        assert torch.equal(full.coarse_map(training), without_position.coarse_map(training))
        full.position, full.mlp = position, None
        assert torch.equal(full.coarse_map(training), without_mlp.coarse_map(training))
