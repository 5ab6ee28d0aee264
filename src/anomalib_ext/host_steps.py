"""Host steps: the parts of a model's inference that run outside its traced graph (OpenCV, NumPy).

A host step prepares a batch before the model (AMFS: align every image to a reference) and restores
the model's maps afterwards (warp them back into the input's frame). Models own their steps
(``model.host_steps()``); an export folder records them by name in ``metadata.json``, and everything
that runs a model — the Inferencer, INT8 calibration, the benchmark, the tests — rebuilds them by
name from there, without importing any model package::

    steps = host_steps_of(model)             # from a trained model (empty for anomalib's own models)
    steps = load_host_steps(folder, config)  # from an export folder's metadata["host_steps"]
    prepared, states = steps.prepare(images)  # (B, 3, H, W) in [0, 1] -> model input, one state per image
    maps = steps.restore(model_maps, states)  # (B, 1, H, W) in the prepared frame -> the input frame

A new step subclasses :class:`HostStep`, decorates itself with :func:`register_host_step` and is listed
in the ``anomalib_ext.host_steps`` entry-point group, so an inferencer in a fresh process finds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from anomalib_ext.errors import AnomalibExtError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import torch
    from anomalib.data import InferenceBatch
    from anomalib.models.components import AnomalibModule

ENTRY_POINT_GROUP = "anomalib_ext.host_steps"
_REGISTRY: dict[str, type[HostStep]] = {}


class HostStep(ABC):
    """One step on the host around the model's graph; ``name`` is its key in ``metadata.json``."""

    name: ClassVar[str]

    @abstractmethod
    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """(B, 3, H, W) images in [0, 1] -> the model's input (same shape) and one state per image."""

    @abstractmethod
    def restore(self, maps: torch.Tensor, states: Sequence[Any]) -> torch.Tensor:
        """(B, 1, H, W) maps in the prepared frame -> the input frame, given the states ``prepare`` returned."""

    @abstractmethod
    def save(self, folder: Path) -> dict[str, Any]:
        """Write the files the step needs into ``folder``; return its JSON-serialisable settings."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> HostStep:
        """The step again, from an export folder and the settings :meth:`save` returned."""

    def report(self) -> dict[str, Any]:  # ruff: ignore[no-self-use] - steps override it
        """Counters worth a benchmark column (e.g. alignment fallbacks); none by default."""
        return {}


def register_host_step(cls: type[HostStep]) -> type[HostStep]:
    """Class decorator: make a step known by its ``name`` in this process."""
    _REGISTRY[cls.name] = cls
    return cls


class UnknownHostStepError(AnomalibExtError, KeyError):
    """An export names a host step this installation does not provide."""


def host_step_class(name: str) -> type[HostStep]:
    """The step class registered under ``name`` (this process first, then the entry points)."""
    if name not in _REGISTRY:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name == name:
                _REGISTRY[name] = entry_point.load()
    if name not in _REGISTRY:
        known = sorted({*_REGISTRY, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        msg = (
            f"Host step {name!r} is not provided by this installation (known: {known}). Install the "
            "anomalib-ext version that wrote the export, or export the model again."
        )
        raise UnknownHostStepError(msg)
    return _REGISTRY[name]


class HostPipeline:
    """Host steps in order: ``prepare`` runs them first to last, ``restore`` last to first."""

    def __init__(self, steps: Sequence[HostStep] = ()) -> None:
        self.steps = list(steps)

    def __bool__(self) -> bool:
        """Whether there is any step."""
        return bool(self.steps)

    def __iter__(self) -> Iterator[HostStep]:
        """The steps in order."""
        return iter(self.steps)

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[Any, ...]]]:
        """Model input and one state per image (a tuple with one entry per step)."""
        per_step = []
        for step in self.steps:
            images, states = step.prepare(images)
            per_step.append(states)
        return images, [tuple(states[i] for states in per_step) for i in range(len(images))]

    def restore(self, maps: torch.Tensor, states: Sequence[tuple[Any, ...]]) -> torch.Tensor:
        """Maps back in the input frame; ``states`` as :meth:`prepare` returned them (any batch of them)."""
        for index in reversed(range(len(self.steps))):
            maps = self.steps[index].restore(maps, [state[index] for state in states])
        return maps

    def save(self, folder: Path) -> dict[str, Any]:
        """``{name: settings}`` for ``metadata.json``, after each step wrote its files into ``folder``."""
        return {step.name: step.save(Path(folder)) for step in self.steps}


def load_host_steps(folder: str | Path, config: dict[str, Any] | None) -> HostPipeline:
    """The pipeline an export folder recorded (``metadata["host_steps"]``), rebuilt by step name."""
    return HostPipeline([
        host_step_class(name).load(Path(folder), settings) for name, settings in (config or {}).items()
    ])


def host_steps_of(model: object) -> HostPipeline:
    """A model's host steps: ``model.host_steps()`` where it defines them, else none (anomalib's models)."""
    method: Callable[[], HostPipeline] | None = getattr(model, "host_steps", None)
    return method() if callable(method) else HostPipeline()


def predict_end_to_end(model: AnomalibModule, images: torch.Tensor) -> InferenceBatch:
    """What a deployed model gives: host ``prepare`` -> anomalib's forward -> host ``restore``.

    ``images``: (B, 3, H, W) in [0, 1] at the model's input size. The forward is the exported graph's
    (pre-processor, model, post-processor), so scores and maps are normalised (0.5 = threshold) as the
    Inferencer reports them; masks are the restored maps above 0.5, as the Inferencer computes them.
    """
    import torch

    steps = host_steps_of(model)
    model.eval()
    with torch.no_grad():
        prepared, states = steps.prepare(images)
        output = model(prepared)
    if not steps:
        return output
    anomaly_map = steps.restore(output.anomaly_map.reshape(len(images), 1, *images.shape[-2:]), states)
    return output.__class__(
        pred_score=output.pred_score,
        pred_label=output.pred_label,
        anomaly_map=anomaly_map,
        pred_mask=anomaly_map > 0.5,
    )
