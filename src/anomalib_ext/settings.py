"""Grouped engineering settings: frozen dataclasses that a model and its torch network share.

Paper hyper-parameters are flat constructor arguments; how a part is trained or sized for a CPU is a group
(``ORBSettings``, PNI's ``NeighborhoodMLPSettings`` and ``RefinerSettings``, AMFS's ``FusionSettings``).
anomalib's CLI builds a group from a YAML block (``mlp: {depth: 3, epochs: 5}``); from Python a group is
given as the dataclass or as a mapping of some of its fields (:func:`as_settings`).

The Lightning model hands its arguments to its torch network with :func:`arguments_for` (the torch
network takes the same names and the same groups), so nothing is forwarded by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, TypeVar, get_args

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

T = TypeVar("T")


def as_settings(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """``value`` as a ``cls`` dataclass: the instance itself, the defaults for None, or a mapping of some fields."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict) or hasattr(value, "keys"):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            msg = f"{cls.__name__} has no setting {', '.join(map(repr, unknown))} (its settings: {sorted(names)})."
            raise ValueError(msg)
        return cls(**dict(value))
    msg = f"Expected {cls.__name__} or a mapping of its fields, got {type(value).__name__}."
    raise TypeError(msg)


def arguments_for(target: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that ``target`` takes as parameters (a Lightning model -> its torch network)."""
    parameters = inspect.signature(target).parameters
    return {name: value for name, value in values.items() if name in parameters}


def check_choice(name: str, value: str, choices: Any) -> str:  # ruff: ignore[any-type] - a typing.Literal
    """``value`` if it is one of the ``Literal`` type ``choices``, else a ValueError listing them."""
    allowed = get_args(choices)
    if value not in allowed:
        msg = f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}."
        raise ValueError(msg)
    return value
