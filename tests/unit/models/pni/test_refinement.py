"""PNI's refinement: stroke labels, the synthetic defects, the loss, the 4-channel network and its training."""

import numpy as np
import pytest
import torch


def test_stroke_labels_are_binary_never_empty_and_seeded():
    from anomalib_ext.components.synthesis import stroke_defect_mask

    masks = [stroke_defect_mask(96, 64, np.random.default_rng(seed)) for seed in range(20)]
    for mask in masks:
        assert mask.shape == (1, 96, 64)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert 0 < float(mask.mean()) < 0.5
    again = stroke_defect_mask(96, 64, np.random.default_rng(3))
    assert torch.equal(again, masks[3])
    assert len({m.sum().item() for m in masks}) > 10  # shapes and sizes vary


def test_synthetic_defects_paste_another_image_inside_the_label():
    from anomalib_ext.models.pni.refinement import synthesise_defects

    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    images[1] = 255  # the defect content (another image) is white, the clean image black
    synthetic, label = synthesise_defects(images, torch.tensor([0, 0, 0]), np.random.default_rng(0))
    assert synthetic.shape == (3, 3, 64, 64) and label.shape == (3, 1, 64, 64)
    inside = label.expand_as(synthetic) > 0.5
    assert synthetic[~inside].abs().max() < 1e-6  # outside A: the clean (black) image
    assert synthetic[inside].min() > 0.8  # inside A: the other (white) image, colour-jittered by at most 10%


def test_normal_share_leaves_some_images_defect_free_and_zero_keeps_the_papers_stream():
    from anomalib_ext.models.pni.refinement import synthesise_defects

    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    images[1] = 255
    indices = torch.zeros(40, dtype=torch.long)
    synthetic, label = synthesise_defects(images, indices, np.random.default_rng(0), normal_share=0.5)
    empty = label.flatten(1).amax(1) == 0
    assert 5 < int(empty.sum()) < 35  # about half, drawn per image
    assert synthetic[empty].abs().max() < 1e-6  # a defect-free image is the clean (black) one, untouched
    assert synthetic[~empty].amax(dim=(1, 2, 3)).min() > 0.8  # the others carry the pasted (white) defect
    paper = synthesise_defects(images, indices[:4], np.random.default_rng(1))
    unchanged = synthesise_defects(images, indices[:4], np.random.default_rng(1), normal_share=0.0)
    assert all(torch.equal(a, b) for a, b in zip(paper, unchanged, strict=True))


def test_loss_is_zero_for_the_label_and_weighs_edges():
    from anomalib_ext.models.pni.refinement import refinement_loss

    label = torch.zeros(1, 1, 16, 16)
    label[..., 4:12, 4:12] = 1
    shifted = torch.roll(label, 1, dims=-1)
    assert float(refinement_loss(label, label)) == 0
    regression_only = torch.nn.functional.mse_loss(shifted, label)
    assert float(refinement_loss(shifted, label)) > float(regression_only)


def _network(**kwargs):
    from anomalib_ext.models.pni.refinement import RefinementNet

    net = RefinementNet("tf_efficientnet_lite0", pre_trained=False, **kwargs).eval()
    net.scale.fill_(2.0)
    return net


def test_network_sees_the_map_and_keeps_the_map_units():
    net = _network()
    images, coarse = torch.rand(2, 3, 64, 48), torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        refined = net.refine(images, coarse)
        other = net.refine(images, coarse.flip(-1))
        out = net(images, coarse)
    assert refined.shape == (2, 1, 64, 48) and refined.min() >= 0 and refined.max() <= 1
    assert not torch.allclose(refined, other)  # the map enters the network (early fusion)
    assert torch.allclose(out, 0.9 * coarse + 0.1 * 2.0 * refined, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(_network(ratio=0.0)(images, coarse), coarse)


def test_network_at_half_resolution_returns_a_full_size_map():
    net = _network(scale=0.5)
    images, coarse = torch.rand(1, 3, 64, 48), torch.rand(1, 1, 64, 48)
    with torch.no_grad():
        refined = net.refine(images, coarse)
        traced = torch.jit.trace(net, (images, coarse), check_trace=False)
        assert torch.allclose(
            traced(images.expand(3, -1, -1, -1), coarse.expand(3, -1, -1, -1))[:1], net(images, coarse)
        )
    assert refined.shape == (1, 1, 64, 48) and refined.min() >= 0 and refined.max() <= 1


def test_network_rejects_bad_settings():
    from anomalib_ext.models.pni.refinement import RefinementNet

    with pytest.raises(ValueError, match="ratio"):
        RefinementNet("tf_efficientnet_lite0", pre_trained=False, ratio=1.5)
    with pytest.raises(ValueError, match="scale"):
        RefinementNet("tf_efficientnet_lite0", pre_trained=False, scale=0.0)
    with pytest.raises(ValueError, match="decoder_channels"):
        RefinementNet("tf_efficientnet_lite0", pre_trained=False, decoder_channels=(8, 8))
    with pytest.raises(ValueError, match="EfficientNet"):
        RefinementNet("resnet18", pre_trained=False)


def _train(images, coarse_map, seed, epochs=3):
    from anomalib_ext.models.pni.refinement import train_refinement

    torch.manual_seed(seed)
    net = _network()
    net.reset_new_layers()
    losses = train_refinement(net, images, coarse_map, epochs=epochs, batch_size=4, learning_rate=3e-3, seed=seed)
    return net, losses


def _blurred_difference(batch):
    # A stand-in for PNI's map: how far each pixel is from the (uniform grey) training images, blurred.
    difference = (batch - 0.5).abs().mean(1, keepdim=True)
    return torch.nn.functional.avg_pool2d(difference, 9, 1, 4)


def test_training_learns_the_labels_and_is_seeded():
    torch.manual_seed(0)
    images = (127 + 40 * torch.rand(8, 3, 48, 48)).to(torch.uint8)
    images[4:] = 255 - images[4:]  # two kinds of image, so that pasted content differs from the clean one
    net, history = _train(images, _blurred_difference, seed=0)
    assert not net.training and float(net.scale) > 0
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.validation_loss == [] and history.best_epoch == 2  # the paper's: every epoch, the last kept
    _, again = _train(images, _blurred_difference, seed=0)
    assert again == history


def _two_kinds(count=12):
    torch.manual_seed(0)
    images = (127 + 40 * torch.rand(count, 3, 48, 48)).to(torch.uint8)
    images[count // 2 :] = 255 - images[count // 2 :]
    return images


@pytest.mark.parametrize("learning_rate", [3e-3, 0.3])
def test_validation_stops_when_its_loss_stops_falling_and_keeps_the_best_epoch(learning_rate):
    from anomalib_ext.models.pni.refinement import train_refinement

    torch.manual_seed(0)
    net = _network()
    net.reset_new_layers()
    snapshots = []
    history = train_refinement(
        net,
        _two_kinds(),
        _blurred_difference,
        epochs=12,
        batch_size=4,
        learning_rate=learning_rate,
        validation=4,
        patience=2,
        on_epoch_end=lambda h: snapshots.append({k: v.clone() for k, v in net.state_dict().items()}),
        seed=0,
    )
    ran = len(history.train_loss)
    assert len(history.validation_loss) == ran == len(snapshots)
    assert history.best_epoch == int(np.argmin(history.validation_loss))
    assert ran == 12 or ran - 1 - history.best_epoch == 2  # all epochs, or stopped 2 epochs after the best
    kept = net.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in snapshots[history.best_epoch].items())  # the best epoch's weights
    if learning_rate == 0.3:  # far too high: the validation loss cannot keep falling for 12 epochs
        assert ran < 12


def test_validation_settings_are_checked():
    from anomalib_ext.models.pni.refinement import train_refinement

    images = _two_kinds(6)
    for validation in (1, 5):  # each part needs two images (one is pasted into the other)
        with pytest.raises(ValueError, match="holds out 2 to N - 2"):
            train_refinement(_network(), images, _blurred_difference, validation=validation)
    with pytest.raises(ValueError, match="patience"):
        train_refinement(_network(), images, _blurred_difference, validation=2, patience=0)


def test_training_needs_two_images():
    from anomalib_ext.models.pni.refinement import train_refinement

    with pytest.raises(ValueError, match="at least 2 training images"):
        train_refinement(_network(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8), _blurred_difference)


def test_training_refuses_a_normal_share_without_defects():
    from anomalib_ext.models.pni.refinement import train_refinement

    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="normal_share"):
        train_refinement(_network(), images, _blurred_difference, normal_share=1.0)


def test_foreign_content_from_noise_or_a_folder(tmp_path):
    from PIL import Image

    from anomalib_ext.components.synthesis import foreign_content

    noise = foreign_content("noise", 3, (40, 32), seed=2)
    assert noise.shape == (3, 3, 40, 32) and noise.dtype == torch.uint8
    assert torch.equal(noise, foreign_content("noise", 3, (40, 32), seed=2))
    assert not torch.equal(noise, foreign_content("noise", 3, (40, 32), seed=3))
    assert noise.min() == 0 and noise.max() == 255  # each channel stretched over the range
    (tmp_path / "sub").mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (20, 10), colour).save(tmp_path / "sub" / f"{i}.png")
    folder = foreign_content(tmp_path, 5, (8, 16), seed=0)
    assert folder.shape == (2, 3, 8, 16)  # fewer images than asked for: all of them
    assert sorted(folder[:, :, 0, 0].tolist()) == [[0, 0, 255], [255, 0, 0]]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        foreign_content(tmp_path / "missing", 2, (8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        foreign_content(tmp_path / "empty", 2, (8, 8))


def test_defects_take_their_content_from_the_sources_when_given():
    from anomalib_ext.models.pni.refinement import synthesise_defects

    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)  # both training images black
    sources = torch.full((1, 3, 64, 64), 255, dtype=torch.uint8)
    synthetic, label = synthesise_defects(images, torch.tensor([0, 1]), np.random.default_rng(0), sources=sources)
    inside = label.expand_as(synthetic) > 0.5
    assert synthetic[inside].min() > 0.8 and synthetic[~inside].abs().max() < 1e-6
