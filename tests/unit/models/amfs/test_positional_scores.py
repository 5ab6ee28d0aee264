"""AMFS's per-position normalisation of positional distances: baseline (mean) and scale (spread)."""

import pytest
import torch


def _model(**kwargs):
    from anomalib_ext.models.amfs.torch_model import AMFSModel

    return AMFSModel("tf_efficientnet_lite0", pre_trained=False, positional={"radius": 0, **kwargs})


def _training_features(n=12, d=4, size=3):
    # Position (0, 0) varies a lot between training images (fabric), every other position a little (print).
    generator = torch.Generator().manual_seed(0)
    features = 0.01 * torch.randn(n, d, size, size, generator=generator)
    features[:, :, 0, 0] += 2.0 * torch.randn(n, d, generator=generator)
    return features


def test_scale_is_the_floored_leave_one_out_spread():
    model = _model(scale=True)
    features = _training_features()
    model.fit_positional(features)
    distances = model.positional.leave_one_out(features)
    spread = distances.std(0)
    assert torch.allclose(model.scale[0, 0], spread.clamp_min(spread.median()))
    assert model.scale[0, 0, 0, 0] > 10 * model.scale[0, 0, 1, 1]  # the varying place has the larger scale
    expected = (model.positional.nearest(features[:2]) - distances.mean(0)) / model.scale[0, 0]
    assert torch.allclose(model.positional_scores(features[:2])[:, 0], expected, atol=1e-5)


def test_scale_ranks_a_deviation_at_a_stable_place_above_the_same_at_a_varying_place():
    features = _training_features()
    query = features.mean(0, keepdim=True).repeat(2, 1, 1, 1)
    query[0, :, 0, 0] += 3.0  # same deviation, at the varying place ...
    query[1, :, 1, 1] += 3.0  # ... and at a stable one
    scaled, shifted = _model(scale=True), _model(scale=False)
    scaled.fit_positional(features)
    shifted.fit_positional(features)
    scaled_scores = scaled.positional_scores(query).flatten(1).amax(1)
    assert scaled_scores[1] > 5 * scaled_scores[0]
    assert shifted.scale.numel() == 0  # baseline only: no division


def test_scale_needs_the_baseline():
    with pytest.raises(ValueError, match="baseline=False"):
        _model(scale=True, baseline=False)
