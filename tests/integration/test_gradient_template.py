"""The Lightning-trained path (docs/ADDING_A_MODEL.md): a toy model on GradientTrainedMixin.

Resuming from a mid-training checkpoint ends at the weights of an uninterrupted run (within 1e-3: see the
test); the epochs are
the trainer's (the model's default where none is given); a 2-process CPU DDP run trains and tests.
"""

from __future__ import annotations

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from torch import nn

from anomalib_ext.models.gradient import GradientTrainedMixin


class _ReconstructionNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, images: torch.Tensor) -> InferenceBatch | torch.Tensor:
        reconstruction = self.net(images)
        if self.training:
            return reconstruction
        anomaly_map = (images - reconstruction).pow(2).mean(1, keepdim=True)
        return InferenceBatch(pred_score=anomaly_map.flatten(1).amax(1), anomaly_map=anomaly_map)


class ToyAutoencoder(GradientTrainedMixin, AnomalibModule):
    """The smallest gradient-trained model: reconstruction error as the anomaly map."""

    default_image_size = (32, 32)
    default_max_epochs = 3

    def __init__(self, width: int = 4, seed: int = 0, **components) -> None:
        super().__init__(**components)
        self.model = _ReconstructionNet(width)
        self.seed = seed

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=1e-2)

    def training_step(self, batch, *args, **kwargs) -> torch.Tensor:
        del args, kwargs
        noisy = batch.image + 0.05 * torch.randn_like(batch.image)  # drawn per step: resume must redraw it
        reconstruction = self.model(noisy)
        l2 = (reconstruction - batch.image).pow(2).mean()
        l1 = (reconstruction - batch.image).abs().mean()
        self.log("train_l2", l2, on_epoch=True, prog_bar=True)
        self.log("train_l1", l1, on_epoch=True)
        return l2 + 0.1 * l1


def _fit(tiny_datamodule, root, *, max_epochs=None, ckpt_path=None, **engine):
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(0)
    model = ToyAutoencoder(pre_processor=ToyAutoencoder.configure_pre_processor(), visualizer=False)
    arguments = {"max_epochs": max_epochs} if max_epochs is not None else {}
    trainer = Engine(default_root_dir=root, logger=False, enable_progress_bar=False, **arguments, **engine)
    trainer.fit(model=model, datamodule=tiny_datamodule(), ckpt_path=ckpt_path)
    return model, trainer


def test_resuming_from_a_mid_training_checkpoint_ends_with_the_uninterrupted_weights(tiny_datamodule, tmp_path):
    uninterrupted, _ = _fit(tiny_datamodule, tmp_path / "whole", max_epochs=4)
    half, first_half = _fit(tiny_datamodule, tmp_path / "half", max_epochs=2)
    checkpoint = first_half.trainer.checkpoint_callback.last_model_path or first_half.best_model_path
    resumed, engine = _fit(tiny_datamodule, tmp_path / "resumed", max_epochs=4, ckpt_path=checkpoint)
    assert engine.trainer.current_epoch == 4
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items(), strict=True):
        if name.startswith("model."):
            # Not yet bit-identical: the resumed run ends 8.4e-5 away, with the same data order and draws
            # (two uninterrupted runs: 0.0; measured); the cause is open (issue 25).
            assert torch.allclose(a, b, atol=1e-3), name
    # the tolerance tells a resumed run from one that stopped at the checkpoint's epoch
    assert not torch.allclose(half.model.net[0].weight, uninterrupted.model.net[0].weight, atol=1e-3)


def test_the_models_default_epochs_apply_only_where_the_user_gave_none(tiny_datamodule, tmp_path):
    _, default = _fit(tiny_datamodule, tmp_path / "default")
    assert default.trainer.current_epoch == ToyAutoencoder.default_max_epochs
    _, given = _fit(tiny_datamodule, tmp_path / "given", max_epochs=1)
    assert given.trainer.current_epoch == 1


def test_two_process_cpu_ddp_trains_and_tests(tiny_datamodule, tmp_path):
    model, engine = _fit(
        tiny_datamodule, tmp_path / "ddp", max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn"
    )
    assert engine.trainer.world_size == 2
    metrics = engine.test(model=model, datamodule=tiny_datamodule(), verbose=False)[0]
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
