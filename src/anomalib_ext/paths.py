"""Where the plugin keeps files of its own (converted backbone weights, generated SyntheticGPD sets).

A module of its own so that ``data/`` and ``backbones.py`` share the location without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ANOMALIB_EXT_CACHE`` when set, else the user cache folder (e.g. ``~/.cache/anomalib_ext``)."""
    env = os.environ.get("ANOMALIB_EXT_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("anomalib_ext"))
