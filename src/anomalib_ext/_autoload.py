"""Imported by ``anomalib_ext_autoload.pth`` at interpreter start-up.

Registers the plugin only when the running program is anomalib's own ``anomalib`` script, so that
``anomalib train --model AMFS`` resolves our short names while every other Python process pays for
nothing more than importing this tiny module (no torch, no anomalib).
"""

import os
import sys


def _running_anomalib_cli() -> bool:
    argv = getattr(sys, "argv", None) or [""]
    return os.path.basename(argv[0]) == "anomalib"  # ruff: ignore[os-path-basename] - pathlib would add to every start-up


if _running_anomalib_cli():
    from anomalib_ext import register

    register()
