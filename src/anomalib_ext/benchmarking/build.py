"""One way to build a model or a datamodule from a spec: the benchmark, the demo and the tests use it.

A spec is anomalib's CLI form ``{class_path, init_args}``, or ``{config: configs/models/X.yaml,
init_args: {...overrides}}`` that reads the file (e.g. ``patchcore_lite2.yaml``) and overrides some
arguments. Classes are imported by their path, so generic code never imports a model package.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]


def import_class(class_path: str) -> type:
    """``package.module.Class`` -> the class (short names resolve in ``anomalib.models``).

    Registers the plugin first (idempotent): besides our names, that points timm at the offline ImageNet
    weights, without which anomalib's own models (Patchcore, Padim) would try to download theirs.
    """
    from anomalib_ext import register

    register()
    if "." not in class_path:
        import anomalib.models

        return getattr(anomalib.models, class_path)
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides``; a settings group given as a mapping in both is merged field by field.

    ``{fusion: {epochs: 5}}`` over a file's ``{fusion: {holdout: 0.2}}`` keeps the hold-out.
    """
    result = dict(base)
    for key, value in overrides.items():
        both_mappings = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value) if both_mappings else value
    return result


def resolve_spec(spec: dict[str, Any] | str | Path) -> dict[str, Any]:
    """``{class_path, init_args}`` from a spec, a ``config`` reference in it, or a YAML file path."""
    if isinstance(spec, (str, Path)):
        spec = {"config": str(spec)}
    spec = dict(spec)
    if "config" in spec:
        path = Path(spec.pop("config"))
        path = path if path.is_absolute() or path.is_file() else REPO / path
        base = yaml.safe_load(path.read_text())
        spec = {
            "class_path": base["class_path"],
            "init_args": merged(base.get("init_args") or {}, spec.get("init_args") or {}),
        }
    if "class_path" not in spec:
        msg = f"A model or data spec needs class_path (or config: a YAML file with one), got {sorted(spec)}"
        raise ValueError(msg)
    return {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}


def build_model(
    spec: dict[str, Any] | str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    seed: int | None = None,
    **components: Any,  # ruff: ignore[any-type] - anomalib components of any kind
) -> Any:  # ruff: ignore[any-type] - an AnomalibModule of any class
    """An anomalib model from a spec, with a pre-processor for ``size`` (int or (H, W)) when given.

    ``seed`` is passed on to models that take one (AMFS); ``components`` (``evaluator=``, ...) go to the
    constructor as anomalib's models accept them.
    """
    from lightning.pytorch.utilities.seed import isolate_rng

    # The first build in a process imports modules that draw from torch's global RNG; without the
    # isolation, the first model after seed_everything() fitted a different coreset than the second
    # (measured: Patchcore's memory bank differed between two same-seed trainings in one process).
    with isolate_rng():
        spec = resolve_spec(spec)
        cls = import_class(spec["class_path"])
        kwargs = {**spec["init_args"], **components}
        if seed is not None and "seed" in inspect.signature(cls).parameters:
            kwargs.setdefault("seed", seed)
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            kwargs["pre_processor"] = cls.configure_pre_processor(size)
        return cls(**kwargs)


def build_datamodule(spec: dict[str, Any] | str | Path, **overrides: Any) -> Any:  # ruff: ignore[any-type] - a datamodule
    """A datamodule from a spec; ``overrides`` replace its ``init_args`` (e.g. ``defect_types=["letter"]``)."""
    spec = resolve_spec(spec)
    return import_class(spec["class_path"])(**{**spec["init_args"], **overrides})


def default_evaluator() -> Any:  # ruff: ignore[any-type] - an anomalib Evaluator
    """Image AUROC and F1, pixel AUROC, AUPRO and AP (pixel metrics skipped on image-label-only sets)."""
    from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Score

    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ],
    )
