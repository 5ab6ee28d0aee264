"""Load a trained model from a Lightning checkpoint, strictly, with one plain sentence for every way it fails.

Lightning's ``load_from_checkpoint(strict=False)`` accepts a checkpoint of another model class (a
Patchcore checkpoint loaded as AMFS only fails later, at export) and missing tensors (a backbone
would silently keep its ImageNet weights). Here every tensor must match, except metric state of
anomalib's evaluator, which depends on the metrics a run was configured with and is not part of
the model.
"""

from __future__ import annotations

import importlib
import pickle  # ruff: ignore[suspicious-pickle-import] - only its exception class, to name an unreadable checkpoint
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from anomalib_ext.errors import AnomalibExtError

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

# Tensors that may differ between a checkpoint and a fresh model: anomalib's Evaluator metric state.
TOLERATED_PREFIXES = ("evaluator.",)
HINT = "anomalib writes checkpoints as results/<model>/<data>/<category>/v<N>/weights/lightning/model.ckpt"


class CheckpointError(AnomalibExtError, ValueError):
    """A file that is not a usable checkpoint of the requested model."""


def resolve_model_class(name: str) -> type:
    """A model class from a name known to anomalib (ours included, after ``register``) or a class path."""
    import anomalib.models

    from anomalib_ext import register

    register()
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            msg = f"Cannot import model class {name!r} ({error})."
            raise CheckpointError(msg) from error
    matches = {n.lower(): n for n in dir(anomalib.models)}
    if name.lower() not in matches:
        msg = f"Unknown model {name!r}: give an anomalib model name (Patchcore, Padim, AMFS, ...) or a class path."
        raise CheckpointError(
            msg,
        )
    return getattr(anomalib.models, matches[name.lower()])


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dictionary; a :class:`CheckpointError` for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        msg = f"Checkpoint {path} does not exist ({HINT})."
        raise CheckpointError(msg)
    try:
        # Our own and anomalib's checkpoints hold pre-/post-processor objects: a full unpickle, as
        # anomalib's own `anomalib export` does. Only load checkpoints you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (
        RuntimeError,
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        AttributeError,
        ModuleNotFoundError,
        OSError,
    ) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        msg = (
            f"{path} is not a readable checkpoint (truncated, or not a PyTorch Lightning .ckpt file: {reason}); {HINT}."
        )
        raise CheckpointError(
            msg,
        ) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        msg = f"{path} is not a Lightning checkpoint (it has no state_dict); {HINT}."
        raise CheckpointError(msg)
    return checkpoint


# Issue 11 renamed AMFS's tensors (model.embedding.*, model.memory.bank) and grouped its ORB settings (orb=).
OLDER_VERSION = (
    "If it is one, it was trained by another anomalib-ext version: retrain it, or export it with that version."
)


def _tolerated(key: str) -> bool:
    return key.startswith(TOLERATED_PREFIXES)


def load_model(name: str, ckpt_path: str | Path) -> AnomalibModule:
    """A trained model of class ``name`` from ``ckpt_path``, every model tensor matched strictly."""
    cls = resolve_model_class(name)
    checkpoint = read_checkpoint(ckpt_path)
    wrong_class = f"{ckpt_path} is not a {cls.__name__} checkpoint"
    try:
        with warnings.catch_warnings():  # Lightning's key-mismatch warnings: our own check below says it in one line
            warnings.filterwarnings("ignore", message="Found keys that are")
            model = cls.load_from_checkpoint(str(ckpt_path), map_location="cpu", strict=False, weights_only=False)
    except (TypeError, RuntimeError, KeyError) as error:
        # TypeError: its hyper-parameters are another class's; RuntimeError: tensor shapes differ.
        first = str(error).strip().splitlines()[0][:200]
        msg = f"{wrong_class} ({first}): export it with the --model it was trained with. {OLDER_VERSION}"
        raise CheckpointError(msg) from error
    # What loading leaves missing or unused, as the model's own loading sees it: a model may upgrade an older
    # checkpoint in its ``_load_from_state_dict`` (PNI: a buffer added later, with its old meaning).
    outcome = model.load_state_dict(checkpoint["state_dict"], strict=False)
    missing = sorted(k for k in outcome.missing_keys if not _tolerated(k))
    unexpected = sorted(k for k in outcome.unexpected_keys if not _tolerated(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"it lacks {len(missing)} of the model's tensors (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"it has {len(unexpected)} the model does not know (e.g. {', '.join(unexpected[:2])})")
        msg = f"{wrong_class}: {' and '.join(parts)}. Export it with the --model it was trained with. {OLDER_VERSION}"
        raise CheckpointError(msg)
    return model
