"""Registration of the plugin's models and datamodules with anomalib.

anomalib 2.7 has no plugin discovery: its CLI resolves ``--model NAME`` among *imported*
``AnomalibModule`` subclasses, and ``get_model``/``get_datamodule`` look names up as attributes of
``anomalib.models``/``anomalib.data`` (dotted paths only inside ``ALLOWED_MODULES``). Our entry-point
groups list what the plugin provides; ``register`` imports each class and publishes it there.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

MODEL_GROUP = "anomalib_ext.models"
DATA_GROUP = "anomalib_ext.data"

_registered = False


def _load_group(group: str) -> dict[str, type]:
    classes = {}
    for entry_point in entry_points(group=group):
        classes[entry_point.name] = entry_point.load()
    return classes


def _module_paths(cls: type) -> set[str]:
    """Every package prefix of a class's module, e.g. ``anomalib_ext.models.amfs`` → 3 paths."""
    parts = cls.__module__.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def register() -> None:
    """Publish the plugin's models and datamodules on ``anomalib.models`` and ``anomalib.data``.

    Idempotent. Also points timm at the offline ImageNet weights (see
    :func:`anomalib_ext.backbones.enable_offline_weights`) so built-in models such as Patchcore can
    use ``tf_efficientnet_lite0/2`` with no network, makes unavailable weights fail in a moment
    instead of retrying downloads, and declines OpenVINO/NNCF telemetry (:mod:`anomalib_ext.offline`).
    """
    global _registered  # ruff: ignore[global-statement] - one registration per process
    if _registered:
        return
    from anomalib_ext.offline import disable_telemetry

    disable_telemetry()  # before anomalib's imports, which may import OpenVINO
    import anomalib.data
    import anomalib.models

    from anomalib_ext.backbones import enable_offline_weights

    models = _load_group(MODEL_GROUP)
    datamodules = _load_group(DATA_GROUP)
    for name, cls in models.items():
        setattr(anomalib.models, name, cls)
        anomalib.models.ALLOWED_MODULES.update(_module_paths(cls))
    for name, cls in datamodules.items():
        setattr(anomalib.data, name, cls)
    enable_offline_weights()
    _registered = True
    logger.debug("anomalib-ext registered models %s and datamodules %s", sorted(models), sorted(datamodules))


def registered_names() -> dict[str, list[str]]:
    """Names the plugin declares, by kind (read from the entry points, nothing imported)."""
    return {
        "models": sorted(ep.name for ep in entry_points(group=MODEL_GROUP)),
        "data": sorted(ep.name for ep in entry_points(group=DATA_GROUP)),
    }
