"""Shared fixtures: tiny data only (the suite must stay fast on a 2-core CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_report_header(config) -> str:
    """The CPU the suite runs on, as OpenVINO sees it: a failure in INT8 or timing then names its machine.

    Nothing in the suite depends on the instruction set except through ``anomalib_ext.deploy.cpu``
    (INT8 exports are made for any x86 CPU by default: see that module).
    """
    try:
        from anomalib_ext.deploy.cpu import cpu_report, describe

        return describe(cpu_report())
    except Exception as error:  # ruff: ignore[blind-except] - the header must never stop the session
        return f"cpu: not known ({error})"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Converted weights and generated data go to a per-session cache unless one is given."""
    if "ANOMALIB_EXT_CACHE" not in os.environ:
        os.environ["ANOMALIB_EXT_CACHE"] = str(tmp_path_factory.mktemp("anomalib_ext_cache"))


@pytest.fixture(scope="session")
def tiny_gpd(tmp_path_factory) -> Path:
    """A SyntheticGPD with one category of 128 px images: 6 train, 3 good test, 2 per defect type."""
    from anomalib_ext.data.synthetic_gpd import generate_dataset

    root = tmp_path_factory.mktemp("tiny_gpd") / "data"
    return generate_dataset(
        root,
        num_categories=1,
        image_size=128,
        train_count=6,
        test_good_count=3,
        defects_per_type=2,
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_datamodule(tiny_gpd):
    """A factory of SyntheticGPD datamodules over ``tiny_gpd`` (batch 4, no workers); keyword overrides."""
    from anomalib_ext.data import SyntheticGPD

    def make(**overrides):
        settings = {
            "num_categories": 1,
            "generated_size": 128,
            "train_count": 6,
            "test_good_count": 3,
            "defects_per_type": 2,
            "train_batch_size": 4,
            "eval_batch_size": 4,
            "num_workers": 0,
        }
        return SyntheticGPD(root=tiny_gpd, **{**settings, **overrides})

    return make
