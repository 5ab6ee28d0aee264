"""anomalib-ext: published industrial anomaly-detection methods as an anomalib 2.7 plugin.

This module stays free of heavy imports: the shipped ``.pth`` file imports
``anomalib_ext._autoload`` (and so this package) in every Python process.
"""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__", "register"]


def register() -> None:
    """Make anomalib's CLI, ``get_model``/``get_datamodule`` and pipelines accept our classes by name.

    See :func:`anomalib_ext._registry.register`.
    """
    from anomalib_ext._registry import register as _register

    _register()
