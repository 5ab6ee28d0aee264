"""One model shape: every registered model is a host-step model with a readable signature."""

import inspect
import typing

import pytest

from anomalib_ext._registry import registered_names

MAX_PARAMETERS = 24


def _model_class(name):
    from anomalib_ext.deploy.checkpoint import resolve_model_class

    return resolve_model_class(name)


def _parameters(cls):
    """The constructor's parameters as anomalib's CLI sees them (cooperative **kwargs followed up the MRO)."""
    from jsonargparse._parameter_resolvers import get_signature_parameters

    return {p.name: p for p in get_signature_parameters(cls)}


@pytest.mark.parametrize("name", registered_names()["models"])
def test_every_model_is_a_host_step_model_with_at_most_24_parameters(name):
    from anomalib_ext.models.base import HostStepsMixin

    cls = _model_class(name)
    assert issubclass(cls, HostStepsMixin), f"{name}: mix in models.base.HostStepsMixin (docs/ADDING_A_MODEL.md)"
    parameters = _parameters(cls)
    assert len(parameters) <= MAX_PARAMETERS, f"{name} takes {len(parameters)}: group engineering settings"


@pytest.mark.parametrize("name", registered_names()["models"])
def test_mode_strings_are_literals(name):
    """A parameter whose default is a string is a choice among a few values: its type must list them."""
    cls = _model_class(name)
    exempt = {"backbone", "backbone_weights"}  # names of timm models and files, not modes
    for base in cls.__mro__:  # the wrapped anomalib model's own parameters are anomalib's business
        if base.__module__.startswith("anomalib.") and "__init__" in vars(base):
            exempt |= set(inspect.signature(base).parameters)
    for parameter in _parameters(cls).values():
        if isinstance(parameter.default, str) and parameter.name not in exempt:
            assert typing.get_origin(parameter.annotation) is typing.Literal, f"{name}.{parameter.name}"


def test_the_aligned_models_take_the_alignment_arguments_once():
    from anomalib_ext.models import AMFS, AlignedPatchcore, AlignedPNI, aligned
    from anomalib_ext.models.alignment import AlignmentMixin

    alignment = {"orb", "reference", "fill_from_reference"}
    for cls in (AMFS, AlignedPatchcore, AlignedPNI):
        assert alignment <= set(_parameters(cls)), cls.__name__
        assert issubclass(cls, AlignmentMixin)
        assert not alignment & set(inspect.signature(cls.__init__).parameters), f"{cls.__name__} repeats them"
    from anomalib.models import Padim

    assert alignment <= set(_parameters(aligned(Padim)))
