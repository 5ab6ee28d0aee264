"""Offline means offline: no telemetry from our processes, and no hub look-ups the user did not ask for.

OpenVINO and NNCF report usage to an analytics service through ``openvino_telemetry`` unless a
consent file in the user's home says no (issue 10 counted 1 request per train or infer, 6 per
quantize, 64 per export; they are sent from forked child processes). Factories run with no internet,
and a tool should not phone home without being asked, so every ``anomalib-ext`` and ``anomalib``
process with the plugin registered declines it: no consent or client-id file is written and nothing
is sent. Opt in with ``ANOMALIB_EXT_TELEMETRY=1`` (OpenVINO's own consent file then decides, as
without the plugin).
"""

from __future__ import annotations

import os

TELEMETRY_ENV = "ANOMALIB_EXT_TELEMETRY"
_TRUE = {"1", "true", "yes", "on"}


def telemetry_opted_in() -> bool:
    """The user asked for OpenVINO/NNCF telemetry (``ANOMALIB_EXT_TELEMETRY=1``)."""
    return os.environ.get(TELEMETRY_ENV, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """Hugging Face's own offline switches (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) are set."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _declined(*_args, **_kwargs) -> object:
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult

    return ConsentCheckResult.DECLINED


def _dropped(*_args, **_kwargs) -> None:
    return None


def disable_telemetry() -> bool:
    """Decline OpenVINO/NNCF telemetry in this process unless the user opted in; ``True`` if it is now off.

    Two hooks, both in ``openvino_telemetry`` (imported on its own: no OpenVINO import): the consent
    check answers "declined" (so no file is written to the user's home and no event is queued), and
    the sender drops messages (some events are sent with ``force_send``, ignoring consent). A
    telemetry object that already exists loses its consent too.
    """
    if telemetry_opted_in():
        return False
    try:
        from openvino_telemetry import main as telemetry_main
        from openvino_telemetry.utils import opt_in_checker, sender
    except ImportError:  # OpenVINO without telemetry: nothing to turn off
        return True
    opt_in_checker.OptInChecker.check = _declined
    sender.TelemetrySender.send = _dropped
    existing = getattr(telemetry_main.Telemetry, "_SingletonMetaClass__single_instance", None)
    if existing is not None:
        existing.consent = False
    return True
