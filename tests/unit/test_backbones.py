import pytest
import torch
import torch.nn.functional as F

from anomalib_ext.backbones import (
    BackboneWeightsError,
    create_backbone,
    create_feature_extractor,
    enable_offline_weights,
)

IMAGENET_COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


def _coffee() -> torch.Tensor:
    from skimage import data

    image = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(260, 260), mode="bilinear", antialias=True)
    return (image - 0.5) / 0.5


def _top5(model) -> set[int]:
    with torch.no_grad():
        return set(model.eval()(_coffee())[0].topk(5).indices.tolist())


def test_lite2_imagenet_head_recognises_coffee():
    assert _top5(create_backbone("tf_efficientnet_lite2")) & IMAGENET_COFFEE


def test_random_lite2_does_not():
    torch.manual_seed(0)
    assert not _top5(create_backbone("tf_efficientnet_lite2", pre_trained=False)) & IMAGENET_COFFEE


def test_timm_create_model_finds_offline_weights_after_enable():
    import timm

    assert "tf_efficientnet_lite0" in enable_offline_weights()
    pretrained = timm.create_model("tf_efficientnet_lite0", pretrained=True)
    reference = create_backbone("tf_efficientnet_lite0")
    assert torch.equal(pretrained.conv_stem.weight, reference.conv_stem.weight)


def test_feature_extractor_uses_imagenet_weights_and_user_file(tmp_path):
    from safetensors.torch import save_file

    extractor = create_feature_extractor("tf_efficientnet_lite0", layers=["blocks.2"])
    random_one = create_feature_extractor("tf_efficientnet_lite0", layers=["blocks.2"], pre_trained=False)
    stem = extractor.feature_extractor.conv_stem.weight
    assert not torch.equal(stem, random_one.feature_extractor.conv_stem.weight)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone("tf_efficientnet_lite0").state_dict().items()}, str(path))
    from_file = create_feature_extractor("tf_efficientnet_lite0", layers=["blocks.2"], backbone_weights=path)
    assert torch.equal(from_file.feature_extractor.conv_stem.weight, stem)


def test_missing_weights_file_names_the_ways_out(tmp_path):
    with pytest.raises(BackboneWeightsError, match="pre_trained=False") as info:
        create_backbone("tf_efficientnet_lite0", backbone_weights=tmp_path / "missing.pth")
    assert "tf_efficientnet_lite2" in str(info.value) and "backbone_weights" in str(info.value)


def test_wrong_architecture_weights_are_refused(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(create_backbone("tf_efficientnet_lite0", pre_trained=False).state_dict(), path)
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        create_backbone("tf_efficientnet_lite2", backbone_weights=path)


def test_unobtainable_hub_weights_fail_fast_with_the_ways_out(monkeypatch):
    from anomalib_ext import backbones

    monkeypatch.setattr(backbones, "_hub_reachable", lambda host="huggingface.co": False)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    with pytest.raises(BackboneWeightsError, match="offline backbone"):
        create_feature_extractor("resnet18", layers=["layer2"])
