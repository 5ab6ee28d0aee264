"""Checkpoints made before the settings were grouped (anomalib-ext 0.1) load by converting their arguments.

A checkpoint's ``hyper_parameters`` are the model's constructor arguments. 0.2 grouped the engineering
settings (``mlp_depth`` -> ``mlp.depth``), took anomalib's spelling (``neighbourhood_size`` ->
``neighborhood_size``) and removed options measured to bring nothing. A model lists what changed in
``legacy_arguments``: an old name maps to its new name, to ``(group, field)``, or to ``REMOVED`` with the
only value the removed option may have had for the checkpoint to mean the same today (anything else is
refused in one sentence naming the version). Checkpoints written since carry ``anomalib_ext_version``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anomalib_ext.errors import AnomalibExtError

VERSION_KEY = "anomalib_ext_version"
SETTINGS_VERSION = "0.2"  # the release that grouped the settings


@dataclass(frozen=True)
class Removed:
    """An argument removed in 0.2; the checkpoint means the same today only if it had ``value``."""

    value: Any


class LegacyCheckpointError(AnomalibExtError, ValueError):
    """A checkpoint of an older version that cannot be converted."""


def upgrade_hyperparameters(
    model_class: type, hyperparameters: dict[str, Any], source: str = "the checkpoint"
) -> dict[str, Any]:
    """``hyperparameters`` of a pre-0.2 checkpoint in today's names (unchanged when none is old)."""
    legacy: dict[str, Any] = {}
    for cls in reversed(model_class.__mro__):
        legacy |= getattr(cls, "legacy_arguments", {})
    upgraded: dict[str, Any] = {}
    for name, value in hyperparameters.items():
        target = legacy.get(name)
        if target is None:
            upgraded[name] = value
        elif isinstance(target, Removed):
            if value != target.value:
                msg = (
                    f"{source} was made before anomalib-ext {SETTINGS_VERSION} with {name}={value!r}, an option "
                    "that was removed (measured no gain): retrain the model with this version."
                )
                raise LegacyCheckpointError(msg)
        elif isinstance(target, tuple):
            group, field = target
            current = upgraded.get(group, hyperparameters.get(group)) or {}
            fields = current if isinstance(current, dict) else _fields(current)
            upgraded[group] = {**fields, field: value}
        else:
            upgraded[target] = value
    return upgraded


def _fields(settings: object) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
