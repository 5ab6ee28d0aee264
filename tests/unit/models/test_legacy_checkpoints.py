"""Checkpoints made before the settings were grouped (0.1) load, converted; a removed option in use is refused."""

import lightning
import pytest
import torch


def _old_pni_hyperparameters(**extra):
    # What anomalib-ext 0.1 saved for a small PNI (its constructor's arguments then).
    return {
        "backbone": "tf_efficientnet_lite0",
        "layers": ["blocks.2", "blocks.4"],
        "pre_trained": False,
        "distribution_size": 8,
        "neighbourhood_size": 3,
        "neighbourhood_centre_block": 1,
        "use_neighbourhood": True,
        "mlp_depth": 2,
        "mlp_width": 16,
        "mlp_projection": None,
        "refine_backbone": "tf_efficientnet_lite0",
        "refine_scale": 1.0,
        "refine_learning_rate": 1e-3,
        "refine_normal_share": 0.0,
        "refine_defect_source": None,
        "seed": 3,
        **extra,
    }


def _write_old_checkpoint(path, model, hyperparameters):
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hyperparameters,
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )


def _new_pni():
    from anomalib_ext.models import PNI

    return PNI(
        "tf_efficientnet_lite0",
        pre_trained=False,
        distribution_size=8,
        neighborhood_size=3,
        mlp={"depth": 2, "width": 16, "projection": None},
        refiner={"backbone": "tf_efficientnet_lite0", "scale": 1.0},
        seed=3,
    )


def test_a_pre_grouping_pni_checkpoint_loads_with_its_settings_converted(tmp_path):
    from anomalib_ext.deploy.checkpoint import load_model
    from anomalib_ext.models.pni.settings import NeighborhoodMLPSettings

    model = _new_pni()
    path = tmp_path / "old.ckpt"
    _write_old_checkpoint(path, model, _old_pni_hyperparameters())
    loaded = load_model("PNI", path)
    assert loaded.model.neighborhood_size == 3 and loaded.seed == 3
    assert loaded.model.mlp_settings == NeighborhoodMLPSettings(depth=2, width=16, projection=None)
    assert loaded.model.refiner_settings.scale == 1.0 and loaded.model.refiner_settings.learning_rate == 1e-3
    for key, value in model.state_dict().items():
        assert torch.allclose(loaded.state_dict()[key].float(), value.float(), equal_nan=True), key


def test_a_checkpoint_that_used_a_removed_option_is_refused_in_one_sentence(tmp_path):
    from anomalib_ext.deploy.checkpoint import load_model
    from anomalib_ext.models.legacy import LegacyCheckpointError

    path = tmp_path / "old.ckpt"
    _write_old_checkpoint(path, _new_pni(), _old_pni_hyperparameters(refine_normal_share=0.5))
    with pytest.raises(LegacyCheckpointError, match=r"before anomalib-ext 0\.2 with refine_normal_share=0\.5.*retrain"):
        load_model("PNI", path)


def test_old_amfs_and_aligned_arguments_map_to_their_groups():
    from anomalib_ext.models import AMFS, AlignedPNI
    from anomalib_ext.models.legacy import LegacyCheckpointError, upgrade_hyperparameters

    upgraded = upgrade_hyperparameters(
        AMFS, {"radius": 2, "unseen_margin": None, "fusion_epochs": 5, "texture_dir": "dtd", "levels": 2}
    )
    assert upgraded == {
        "positional": {"radius": 2, "unseen_margin": None},
        "fusion": {"epochs": 5, "texture_dir": "dtd"},
        "levels": 2,
    }
    assert upgrade_hyperparameters(AlignedPNI, {"match_fill_light": False, "mlp_depth": 4}) == {"mlp": {"depth": 4}}
    with pytest.raises(LegacyCheckpointError, match="match_fill_light=True"):
        upgrade_hyperparameters(AlignedPNI, {"match_fill_light": True})


def test_checkpoints_written_now_carry_the_version():
    from anomalib_ext import __version__
    from anomalib_ext.models.legacy import VERSION_KEY

    checkpoint = {}
    _new_pni().on_save_checkpoint(checkpoint)
    assert checkpoint[VERSION_KEY] == __version__
