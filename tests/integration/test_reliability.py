"""Safe to trust: nothing lost, nothing silent, same seed -> same result, offline means offline.

Each test here failed before the fix it guards (issue 10): export/quantize deleting folders they
did not write, inference that wrote nothing and exited 0, runs that differed with one seed,
telemetry and hub look-ups, lax checkpoint loading. Data reading (16-bit images, mask names, up-front
validation) is tested in ``tests/unit/data/test_data.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import pytest
import torch

PATCHCORE = [
    "--model",
    "Patchcore",
    "--model.backbone",
    "tf_efficientnet_lite0",
    "--model.layers",
    "[blocks.2, blocks.4]",
    "--model.coreset_sampling_ratio",
    "0.1",
]
AMFS_TINY = """
model:
  class_path: anomalib_ext.models.AMFS
  init_args:
    backbone: tf_efficientnet_lite0
    coreset_sampling_ratio: 0.1
    fusion: {epochs: 5, samples_per_image: 2}
    pre_processor:
      class_path: anomalib.pre_processing.PreProcessor
      init_args:
        transform:
          class_path: torchvision.transforms.v2.Resize
          init_args: {size: [128, 128], antialias: true}
"""


def _data(root: Path) -> list[str]:
    return [
        "--data",
        "MVTecLikeFolder",
        "--data.root",
        str(root),
        "--data.category",
        "p001",
        "--data.num_workers",
        "0",
        "--data.train_batch_size",
        "2",
    ]


def _train(model_args: list[str], data_root: Path, seed: int, out: Path) -> Path:
    """``anomalib-ext train`` in this process; returns the checkpoint it wrote."""
    from anomalib_ext.cli import main

    assert (
        main(["train", *model_args, *_data(data_root), "--seed_everything", str(seed), "--default_root_dir", str(out)])
        == 0
    )
    (checkpoint,) = out.rglob("*.ckpt")
    return checkpoint


def _predict(ckpt: Path, name: str, images: torch.Tensor):
    from anomalib_ext.deploy.checkpoint import load_model

    model = load_model(name, ckpt).eval()
    with torch.no_grad():
        return model(images)


def _test_images(root: Path) -> torch.Tensor:
    from anomalib_ext.data.mvtec_like import read_rgb

    paths = sorted((root / "p001" / "test").rglob("*.jpg"))[::4]
    return torch.stack([torch.from_numpy(read_rgb(p)).permute(2, 0, 1).float() / 255 for p in paths])


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def patchcore_runs(tiny_gpd, tmp_path_factory):
    """Two ``anomalib-ext train`` runs of Patchcore with seed 42 (their checkpoints)."""
    root = tmp_path_factory.mktemp("patchcore_runs")
    return [_train(PATCHCORE, tiny_gpd, 42, root / f"run{i}") for i in (1, 2)]


@pytest.fixture(scope="module")
def fp32_export(patchcore_runs, tmp_path_factory):
    from anomalib_ext.cli import main

    out = tmp_path_factory.mktemp("exports") / "fp32"
    assert main(["export", "--model", "Patchcore", "--ckpt_path", str(patchcore_runs[0]), "--output", str(out)]) == 0
    return out


# ---- 3. reproducibility ------------------------------------------------------------------------
def test_patchcore_same_seed_through_our_cli_gives_identical_scores_and_maps(patchcore_runs, tiny_gpd):
    """anomalib 2.7's CLI parsed --seed_everything and never applied it (image AUROC 0.667 vs 0.556)."""
    images = _test_images(tiny_gpd)
    first, second = (_predict(ckpt, "Patchcore", images) for ckpt in patchcore_runs)
    assert torch.equal(first.pred_score, second.pred_score)
    assert torch.equal(first.anomaly_map, second.anomaly_map)


def test_amfs_fit_does_not_depend_on_loader_order(tiny_gpd, tmp_path):
    """Two global seeds shuffle the training images differently; AMFS's own seed fixes its result.

    Before: the hold-out split followed the loader order (image AUROC 0.500 vs 0.604 on this data)."""
    config = tmp_path / "amfs_tiny.yaml"
    config.write_text(AMFS_TINY)
    runs = [_train(["--config", str(config)], tiny_gpd, seed, tmp_path / f"seed{seed}") for seed in (1, 2)]
    images = _test_images(tiny_gpd)
    first, second = (_predict(ckpt, "AMFS", images) for ckpt in runs)
    assert torch.equal(first.pred_score, second.pred_score)
    assert torch.equal(first.anomaly_map, second.anomaly_map)


# ---- 1. export and quantize never remove what they did not write --------------------------------
def test_export_refuses_a_foreign_folder_and_overwrite_keeps_its_files(patchcore_runs, tmp_path, capsys):
    from anomalib_ext.cli import main

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    args = ["export", "--model", "Patchcore", "--ckpt_path", str(patchcore_runs[0]), "--output", str(victim)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in victim.iterdir()] == ["thesis.txt"]
    assert main([*args, "--overwrite"]) == 0
    assert (victim / "thesis.txt").read_text() == "years of work" and (victim / "model.xml").is_file()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_export_refuses_the_working_folder_its_parents_and_the_checkpoint_folder(
    patchcore_runs,
    tmp_path,
    monkeypatch,
    capsys,
):
    from anomalib_ext.cli import main

    work = tmp_path / "work"
    work.mkdir()
    checkpoint = work / "model.ckpt"
    shutil.copy(patchcore_runs[0], checkpoint)
    monkeypatch.chdir(work)
    for output in (".", "..", str(work)):
        assert (
            main(["export", "--model", "Patchcore", "--ckpt_path", "model.ckpt", "--output", output, "--overwrite"])
            == 2
        )
        assert "--output" in capsys.readouterr().err
    assert [p.name for p in work.iterdir()] == ["model.ckpt"]
    nested = tmp_path / "ckpts" / "run"
    nested.mkdir(parents=True)
    shutil.copy(patchcore_runs[0], nested / "model.ckpt")
    assert (
        main([
            "export",
            "--model",
            "Patchcore",
            "--ckpt_path",
            str(nested / "model.ckpt"),
            "--output",
            str(tmp_path / "ckpts"),
            "--overwrite",
        ])
        == 2
    )
    assert "holds the input" in capsys.readouterr().err
    assert (nested / "model.ckpt").stat().st_size == patchcore_runs[0].stat().st_size


def test_reexport_replaces_only_our_files_and_uses_the_umask(fp32_export, patchcore_runs, tmp_path):
    from anomalib_ext.cli import main

    out = tmp_path / "export"
    assert main(["export", "--model", "Patchcore", "--ckpt_path", str(patchcore_runs[1]), "--output", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()
    metadata = json.loads((out / "metadata.json").read_text())
    assert set(metadata["files"]) == {"model.xml", "model.bin", "metadata.json"}
    # A stale host-step file of an earlier export (listed in its metadata) goes; the user's notes stay.
    (out / "amfs_reference.png").write_bytes(b"old reference")
    metadata["files"].append("amfs_reference.png")
    (out / "metadata.json").write_text(json.dumps(metadata))
    (out / "notes.txt").write_text("keep me")
    assert main(["export", "--model", "Patchcore", "--ckpt_path", str(patchcore_runs[1]), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.bin", "model.xml", "notes.txt"]
    assert not list(out.parent.glob(".export.*"))  # no staging folder left


def test_quantize_refuses_to_write_over_its_input(fp32_export, tiny_gpd, capsys):
    from anomalib_ext.cli import main

    before = _digest(fp32_export)
    for output in (fp32_export, fp32_export.parent):
        assert (
            main([
                "quantize",
                "--model-dir",
                str(fp32_export),
                "--calibration",
                str(tiny_gpd / "p001/train/good"),
                "--output",
                str(output),
            ])
            == 2
        )
        assert "holds the input" in capsys.readouterr().err
    assert _digest(fp32_export) == before


# ---- 7. calibration size -----------------------------------------------------------------------
def test_quantize_warns_about_too_few_calibration_images_and_reports_the_count(
    fp32_export,
    tiny_gpd,
    tmp_path,
    capsys,
    caplog,
):
    from anomalib_ext.cli import main
    from anomalib_ext.export_format import read_metadata

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next((tiny_gpd / "p001/train/good").glob("*.jpg")), one)
    assert (
        main([
            "quantize",
            "--model-dir",
            str(fp32_export),
            "--calibration",
            str(one),
            "--output",
            str(tmp_path / "int8"),
        ])
        == 0
    )
    assert "with 1 calibration image(s) (fewer than the 32 recommended)" in capsys.readouterr().out
    assert any("calibration on 1 image" in r.getMessage() for r in caplog.records)
    assert read_metadata(tmp_path / "int8")["quantization"]["calibration_images"] == 1
    assert stat.S_IMODE((tmp_path / "int8").stat().st_mode) == 0o777 & ~_umask()
    # Quantising the INT8 copy again: one line, exit 2 (was a ValueError traceback).
    assert (
        main([
            "quantize",
            "--model-dir",
            str(tmp_path / "int8"),
            "--calibration",
            str(one),
            "--output",
            str(tmp_path / "x"),
        ])
        == 2
    )
    assert "is already INT8" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ---- 6. checkpoints ----------------------------------------------------------------------------
def test_export_refuses_wrong_class_truncated_and_foreign_checkpoints(patchcore_runs, tmp_path, capsys):
    from anomalib_ext.cli import main

    def export(model: str, ckpt: Path) -> str:
        assert main(["export", "--model", model, "--ckpt_path", str(ckpt), "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(ckpt) in err
        assert not (tmp_path / "out").exists()
        return err

    assert "is not a AMFS checkpoint" in export("AMFS", patchcore_runs[0])
    # A checkpoint of the right class whose tensors were renamed since (as AMFS's were in issue 11).
    import torch

    checkpoint = torch.load(patchcore_runs[0], map_location="cpu", weights_only=False)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("model.memory_bank"))
    checkpoint["state_dict"][key.replace("memory_bank", "old_name")] = checkpoint["state_dict"].pop(key)
    renamed = tmp_path / "renamed.ckpt"
    torch.save(checkpoint, renamed)
    assert "another anomalib-ext version" in export("Patchcore", renamed)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(patchcore_runs[0].read_bytes()[: patchcore_runs[0].stat().st_size // 2])
    assert "not a readable checkpoint" in export("Patchcore", truncated)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x80\x04garbage" * 10)
    assert "not a readable checkpoint" in export("Patchcore", garbage)
    checkpoint = torch.load(patchcore_runs[0], weights_only=False)
    del checkpoint["state_dict"]["model.memory_bank"]
    torch.save(checkpoint, tmp_path / "no_bank.ckpt")
    assert "lacks 1 of the model's tensors (e.g. model.memory_bank)" in export("Patchcore", tmp_path / "no_bank.ckpt")


def test_checkpoint_with_extra_evaluator_state_still_loads(patchcore_runs, tmp_path):
    from anomalib_ext.deploy.checkpoint import load_model

    checkpoint = torch.load(patchcore_runs[0], weights_only=False)
    checkpoint["state_dict"]["evaluator.test_metrics.extra.tp"] = torch.zeros(3)
    torch.save(checkpoint, tmp_path / "extra.ckpt")
    assert load_model("Patchcore", tmp_path / "extra.ckpt").model.memory_bank.numel() > 0


# ---- 2. inference output that can be trusted ----------------------------------------------------
def _infer(*args: str) -> int:
    from anomalib_ext.cli import main

    return main(["infer", *args])


def _images_folder(tiny_gpd: Path, folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True)
    for path in sorted((tiny_gpd / "p001/test/good").glob("*.jpg"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def test_infer_lists_every_input_with_its_status_and_exits_1_on_failures(fp32_export, tiny_gpd, tmp_path, capsys):
    inputs = _images_folder(tiny_gpd, tmp_path / "in", 2)
    (inputs / "corrupt.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert _infer("--model-dir", str(fp32_export), "--input", str(inputs), "--output", str(out)) == 1
    assert "--allow-errors" in capsys.readouterr().err
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,status,score,label,error" and len(rows) == 4
    failed = [r for r in rows[1:] if ",error," in r]
    assert len(failed) == 1 and "corrupt.png" in failed[0] and "Cannot read image" in failed[0]
    assert _infer("--model-dir", str(fp32_export), "--input", str(inputs), "--output", str(out), "--allow-errors") == 0
    assert not list(out.rglob(".*.tmp"))


def test_infer_never_reads_its_own_or_earlier_results(fp32_export, tiny_gpd, tmp_path):
    """Outputs inside the searched folder (maps/*.png, overlays/*.jpg) were read back as inputs."""
    inputs = _images_folder(tiny_gpd, tmp_path / "in", 2)
    cv2.imwrite(str(inputs / "extra.png"), cv2.imread(str(next(inputs.glob("*.jpg")))))
    for output in (inputs / "results", inputs / "results", inputs / "other_results"):
        # The folder and a recursive glob name extra.png twice: it is predicted once.
        assert (
            _infer(
                "--model-dir",
                str(fp32_export),
                "--input",
                str(inputs),
                str(inputs / "**" / "*.png"),
                "--output",
                str(output),
            )
            == 0
        )
        assert len((output / "scores.csv").read_text().splitlines()) == 1 + 3


def test_a_second_run_on_a_locked_output_folder_is_refused(fp32_export, tiny_gpd, tmp_path, capsys):
    from anomalib_ext.deploy.folders import OutputLock

    inputs = _images_folder(tiny_gpd, tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        assert _infer("--model-dir", str(fp32_export), "--input", str(inputs), "--output", str(out)) == 2
    assert "is being written by anomalib-ext (pid" in capsys.readouterr().err
    assert not (out / "scores.csv").exists()
    assert _infer("--model-dir", str(fp32_export), "--input", str(inputs), "--output", str(out)) == 0  # released


def test_invalid_arguments_and_damaged_exports_get_one_clear_message(fp32_export, tiny_gpd, tmp_path, capsys):
    inputs = _images_folder(tiny_gpd, tmp_path / "in", 1)
    with pytest.raises(SystemExit) as exit_info:
        _infer(
            "--model-dir",
            str(fp32_export),
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "o"),
            "--batch-size",
            "0",
        )
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    no_input = tmp_path / "no_input"
    shutil.copytree(fp32_export, no_input)
    metadata = json.loads((no_input / "metadata.json").read_text())
    del metadata["input"]
    (no_input / "metadata.json").write_text(json.dumps(metadata))
    truncated = tmp_path / "truncated"
    shutil.copytree(fp32_export, truncated)
    with Path(truncated / "model.bin").open("r+b") as file:
        file.truncate((truncated / "model.bin").stat().st_size // 2)
    for folder, named in ((no_input, "metadata.json"), (truncated, "model.bin")):
        assert _infer("--model-dir", str(folder), "--input", str(inputs), "--output", str(tmp_path / "o")) == 2
        err = capsys.readouterr().err
        assert named in err and "xport the model again" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written when the model cannot be used


LIMITED_INFER = """
import resource, sys, tempfile
tempfile.gettempdir()  # Python probes its temp folder with a small write once: before the limit
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from anomalib_ext.cli import main
sys.exit(main(["infer", *sys.argv[2:]]))
"""


def _infer_with_file_size_limit(limit: int, model: Path, inputs: Path, out: Path) -> subprocess.CompletedProcess:
    """``anomalib-ext infer`` in a child whose files may not grow past ``limit`` bytes: a full disk as
    the writes see it (EFBIG at the limit), and with 0 a folder nothing can be written to, for root
    too (root writes into read-only folders)."""
    command = [
        sys.executable,
        "-c",
        LIMITED_INFER,
        str(limit),
        "--model-dir",
        str(model),
        "--input",
        str(inputs),
        "--output",
        str(out),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_unwritable_output_and_a_full_disk_fail_loudly_and_leave_no_partial_files(fp32_export, tiny_gpd, tmp_path):
    inputs = _images_folder(tiny_gpd, tmp_path / "in", 3)
    # Nothing can be written: refused before any inference (was: OpenCV WARN lines, exit 0, no maps).
    unwritable = _infer_with_file_size_limit(0, fp32_export, inputs, tmp_path / "out0")
    assert unwritable.returncode == 2 and "Cannot write to" in unwritable.stderr
    assert "OpenVINO inference" not in unwritable.stderr  # the progress bar never started
    # Small files fit, larger ones do not: the run stops naming the file; no truncated file, no CSV.
    full = _infer_with_file_size_limit(2000, fp32_export, inputs, tmp_path / "out")
    assert full.returncode == 2 and "Could not write" in full.stderr, full.stderr[-2000:]
    assert not (tmp_path / "out" / "scores.csv").exists()
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.name != ".anomalib-ext-output.lock":
            assert not path.name.startswith("."), f"temporary file left: {path}"
            assert path.stat().st_size > 0 and cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path


# ---- 5. offline means offline ------------------------------------------------------------------
NO_NETWORK = """
import json, os, socket, sys, time

def blocked(name):
    def refuse(*args, **kwargs):
        # Appended to a file, not a list: OpenVINO's telemetry sends from forked child processes.
        with open(os.environ["ATTEMPTS_LOG"], "a") as log:
            log.write(f"{name}{args[1:2] if name.startswith('connect') else args[:1]}\\n")
        raise OSError("network blocked by the test")
    return refuse

socket.getaddrinfo = blocked("getaddrinfo")
socket.create_connection = blocked("create_connection")
socket.socket.connect = blocked("connect")
socket.socket.connect_ex = blocked("connect_ex")
from anomalib_ext.cli import main
codes = [main(step) for step in json.loads(sys.argv[1])]
time.sleep(2)  # telemetry is sent from a thread pool: give it time to try
print("RESULT " + json.dumps({"codes": codes}))
"""


def test_train_export_quantize_infer_attempt_no_connection(tiny_gpd, tmp_path):
    """OpenVINO/NNCF telemetry posted 1 request per train/infer, 6 per quantize, 64 per export."""
    run = tmp_path / "run"
    steps = [
        ["train", *PATCHCORE, *_data(tiny_gpd), "--default_root_dir", str(run)],
        ["export", "--model", "Patchcore", "--ckpt_path", "CKPT", "--output", str(tmp_path / "fp32")],
        [
            "quantize",
            "--model-dir",
            str(tmp_path / "fp32"),
            "--calibration",
            str(tiny_gpd / "p001/train/good"),
            "--output",
            str(tmp_path / "int8"),
        ],
        [
            "infer",
            "--model-dir",
            str(tmp_path / "int8"),
            "--input",
            str(tiny_gpd / "p001/test/good"),
            "--output",
            str(tmp_path / "out"),
        ],
    ]
    script = tmp_path / "no_network.py"
    # The checkpoint's path is known only after training: the script finds it between the steps.
    script.write_text(
        textwrap.dedent(NO_NETWORK).replace(
            "codes = [main(step) for step in json.loads(sys.argv[1])]",
            "codes = []\nfor step in json.loads(sys.argv[1]):\n"
            f"    step = [str(next(__import__('pathlib').Path({str(run)!r}).rglob('*.ckpt'))) if a == 'CKPT' else a for a in step]\n"
            "    codes.append(main(step))",
        ),
    )
    home = tmp_path / "home"  # no OpenVINO consent file: OpenVINO's default is to send
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "TF_BUILD", "JENKINS_URL", "ANOMALIB_EXT_TELEMETRY"}}
    attempts = tmp_path / "attempts.log"
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", ATTEMPTS_LOG=str(attempts))
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT ") :])
    assert report["codes"] == [0, 0, 0, 0], result.stderr[-3000:]
    assert not attempts.exists(), attempts.read_text()[:2000]
    assert not (home / "intel").exists()  # no consent or client-id file written to the user's home


def test_unavailable_backbone_fails_in_seconds_with_one_short_message(tiny_gpd, tmp_path, monkeypatch, capsys):
    """Was: a 200-line jsonargparse Union traceback after 54 s of hub retries (Patchcore)."""
    from anomalib_ext.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached resnet18 weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for model in ("Patchcore", "AMFS"):
        start = time.perf_counter()
        assert (
            main([
                "train",
                "--model",
                model,
                "--model.backbone",
                "resnet18",
                *_data(tiny_gpd),
                "--default_root_dir",
                str(tmp_path / model),
            ])
            == 2
        )
        assert time.perf_counter() - start < 30
        err = capsys.readouterr().err
        assert "resnet18" in err and "offline backbone" in err and "pre_trained=False" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 8
