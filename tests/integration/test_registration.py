"""The installed plugin as users meet it: anomalib's own CLI, our console script, get_*() lookups."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _script(name: str) -> str | None:
    """The console script beside this interpreter (the venv under test), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else shutil.which(name)


ANOMALIB = _script("anomalib")
ANOMALIB_EXT = _script("anomalib-ext")


def _run(args, **kwargs):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, check=False, **kwargs)


@pytest.mark.parametrize("data", ["SyntheticGPD", "anomalib_ext.data.SyntheticGPD", "MVTecLikeFolder"])
def test_stock_anomalib_cli_resolves_our_datamodule(data, tmp_path):
    assert ANOMALIB, "anomalib console script not installed"
    args = [ANOMALIB, "train", "--model", "Patchcore", "--data", data, "--print_config"]
    if data == "MVTecLikeFolder":
        args += ["--data.root", str(tmp_path)]
    result = _run(args)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = "anomalib_ext.data.MVTecLikeFolder" if data == "MVTecLikeFolder" else "anomalib_ext.data.SyntheticGPD"
    assert expected in result.stdout


@pytest.mark.parametrize("model", ["AMFS", "anomalib_ext.models.AMFS"])
def test_stock_anomalib_cli_resolves_our_model(model):
    result = _run([ANOMALIB, "train", "--model", model, "--data", "SyntheticGPD", "--print_config"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: anomalib_ext.models.AMFS" in result.stdout and "levels: 3" in result.stdout


def test_anomalib_ext_console_script_is_anomalib_plus_plugin():
    assert ANOMALIB_EXT, "anomalib-ext console script not installed"
    result = _run([ANOMALIB_EXT, "train", "--model", "AMFS", "--data", "SyntheticGPD", "--print_config"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: anomalib_ext.models.AMFS" in result.stdout
    assert "class_path: anomalib_ext.data.SyntheticGPD" in result.stdout
    helped = _run([ANOMALIB_EXT, "--help"])
    assert "make-gpd" in helped.stdout and "train" in helped.stdout


def test_pth_autoload_is_cheap_outside_anomalib():
    code = "import sys; print('anomalib_ext' in sys.modules, 'torch' in sys.modules, 'anomalib' in sys.modules)"
    result = _run([sys.executable, "-c", code])
    assert result.stdout.split() == ["True", "False", "False"], result.stdout + result.stderr


def test_get_datamodule_and_models_after_register(tiny_gpd):
    import anomalib.data
    import anomalib.models

    from anomalib_ext import register
    from anomalib_ext._registry import registered_names
    from anomalib_ext.data import SyntheticGPD

    register()
    datamodule = anomalib.data.get_datamodule({"class_path": "SyntheticGPD", "init_args": {"root": str(tiny_gpd)}})
    assert isinstance(datamodule, SyntheticGPD)
    full = anomalib.data.get_datamodule({
        "class_path": "anomalib_ext.data.SyntheticGPD",
        "init_args": {"root": str(tiny_gpd)},
    })
    assert isinstance(full, SyntheticGPD)
    assert set(registered_names()["data"]) == {"GPD", "SyntheticGPD", "MVTecLikeFolder"}
    assert registered_names()["models"] == ["AMFS", "AlignedPNI", "AlignedPatchcore", "PNI"]
    from anomalib_ext.models import AMFS, PNI, AlignedPatchcore

    # (anomalib's lookup by bare name searches direct AnomalibModule subclasses only: the class-path form)
    aligned = anomalib.models.get_model({"class_path": "AlignedPatchcore", "init_args": {"pre_trained": False}})
    assert isinstance(aligned, AlignedPatchcore)

    assert isinstance(anomalib.models.get_model("AMFS", pre_trained=False), AMFS)
    assert isinstance(
        anomalib.models.get_model({"class_path": "anomalib_ext.models.AMFS", "init_args": {"pre_trained": False}}),
        AMFS,
    )
    assert isinstance(anomalib.models.get_model("PNI", pre_trained=False), PNI)


@pytest.mark.slow
def test_anomalib_benchmark_mixes_amfs_with_patchcore(tiny_gpd, tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
accelerator: [cpu]
benchmark:
  seed: 42
  model:
    class_path:
      grid: [Patchcore, AMFS]
    init_args:
      backbone: tf_efficientnet_lite0
      layers: [blocks.2, blocks.4]
      coreset_sampling_ratio: 0.1
  data:
    class_path: SyntheticGPD
    init_args:
      root: {tiny_gpd}
      num_categories: 1
      generated_size: 128
      train_count: 6
      test_good_count: 3
      defects_per_type: 2
      num_workers: 0
""")
    result = _run([ANOMALIB, "benchmark", "--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import pandas as pd

    csv = next(tmp_path.glob("runs/benchmark/*/results.csv"))
    table = pd.read_csv(csv)
    assert sorted(table["model.class_path"].str.split(".").str[-1]) == ["AMFS", "Patchcore"]
    assert table["image_AUROC"].between(0, 1).all()
