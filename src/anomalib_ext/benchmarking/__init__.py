"""Benchmark jobs and grids: build models and data from specs, run fit/test/export/INT8/accuracy/timing.

``tools/benchmark.py`` is the command line over :mod:`anomalib_ext.benchmarking.grid`.
"""

from anomalib_ext.benchmarking.build import build_datamodule, build_model, default_evaluator, resolve_spec

__all__ = ["build_datamodule", "build_model", "default_evaluator", "resolve_spec"]
