"""The host-step protocol: order of prepare/restore, states per image, save/load by name, unknown names."""

import json

import numpy as np
import pytest
import torch

from anomalib_ext.host_steps import HostPipeline, HostStep, UnknownHostStepError, load_host_steps, register_host_step
from anomalib_ext.transforms.align import AlignmentStep, ORBSettings


@register_host_step
class ShiftStep(HostStep):
    """Adds a constant before the model and subtracts it from the maps after (a step that must be undone)."""

    name = "shift_for_test"

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def prepare(self, images):
        return images + self.amount, [self.amount] * len(images)

    def restore(self, maps, states):
        return maps - torch.tensor(states).view(-1, 1, 1, 1)

    def save(self, folder):
        return {"amount": self.amount}

    @classmethod
    def load(cls, folder, config):
        return cls(config["amount"])


def test_prepare_runs_first_to_last_and_restore_last_to_first():
    calls = []

    class Recorder(ShiftStep):
        def prepare(self, images):
            calls.append(("prepare", self.amount))
            return super().prepare(images)

        def restore(self, maps, states):
            calls.append(("restore", self.amount))
            return super().restore(maps, states)

    pipeline = HostPipeline([Recorder(1.0), Recorder(2.0)])
    images = torch.zeros(3, 3, 4, 4)
    prepared, states = pipeline.prepare(images)
    assert torch.all(prepared == 3.0) and states == [(1.0, 2.0)] * 3  # one state tuple per image, one entry per step
    restored = pipeline.restore(prepared[1:, :1], states[1:])  # any batch of the states restores its maps
    assert restored.shape == (2, 1, 4, 4) and torch.all(restored == 0.0)
    assert calls == [("prepare", 1.0), ("prepare", 2.0), ("restore", 2.0), ("restore", 1.0)]


def test_pipeline_saves_and_loads_by_name(tmp_path):
    pipeline = HostPipeline([ShiftStep(0.25)])
    config = json.loads(json.dumps(pipeline.save(tmp_path)))  # as metadata.json holds it
    assert config == {"shift_for_test": {"amount": 0.25}}
    loaded = load_host_steps(tmp_path, config)
    assert [type(s) for s in loaded] == [ShiftStep] and loaded.steps[0].amount == 0.25
    assert not load_host_steps(tmp_path, {}) and not load_host_steps(tmp_path, None)


def test_unknown_step_names_the_fix(tmp_path):
    with pytest.raises(UnknownHostStepError, match="export the model again"):
        load_host_steps(tmp_path, {"no_such_step": {}})


def test_alignment_step_round_trip_through_an_export_folder(tmp_path):
    """`align` is found by name (entry point) and rebuilt from its reference file and settings."""
    from anomalib_ext.data.garment_print import make_design, photograph, render_design

    rng = np.random.default_rng(0)
    design = make_design(rng, 256)
    image, mask = render_design(design, rng, None)
    reference = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    step = AlignmentStep(reference, ORBSettings(n_features=800))
    config = json.loads(json.dumps(HostPipeline([step]).save(tmp_path)))
    loaded = load_host_steps(tmp_path, config).steps[0]
    assert isinstance(loaded, AlignmentStep) and loaded.settings == step.settings
    assert np.array_equal(loaded.reference_image, reference)
    photo, _ = photograph(image, mask, design, rng)
    tensor = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.float32)).permute(2, 0, 1)[None]
    aligned_a, states_a = step.prepare(tensor)
    aligned_b, states_b = loaded.prepare(tensor)
    assert torch.equal(aligned_a, aligned_b) and np.allclose(states_a[0], states_b[0])
    assert loaded.report() == {"align_fallbacks": "0/1"}
