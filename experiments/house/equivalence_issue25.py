"""Issue 25's check that the redesign changed no result: the same seed gives the same scores and maps.

Trains AMFS, PNI, AlignedPNI and AlignedPatchcore (seed 0) on

- ``tiny``: the test suite's 6-image 128 px SyntheticGPD, with each model's ``configs/models/*_tiny.yaml``;
- ``tire``: ../shared/data/tire at 256 px, AMFS and PNI with their defaults (``amfs.yaml``, ``pni.yaml``),
  the aligned models with their tiny configs (alignment does not suit tire; the run checks code paths),

and writes, per run, the raw scores and maps (``predict_raw`` on the pre-processed test images), the
deployed ones (``predict_end_to_end``) and anomalib's test metrics to ``<out>/<set>__<model>.npz`` and
``<out>/metrics.json``. Run it before and after a change (the "before" on a worktree of the old commit)
and compare the two folders with ``--compare``::

    python experiments/redesign/equivalence.py --out results/equivalence/after
    python experiments/redesign/equivalence.py --compare results/equivalence/before results/equivalence/after
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))  # a worktree elsewhere sets it
RUNS = {
    "tiny": {
        "AMFS": "amfs_tiny.yaml",
        "PNI": "pni_tiny.yaml",
        "AlignedPNI": "alignedpni_tiny.yaml",
        "AlignedPatchcore": "alignedpatchcore_tiny.yaml",
    },
    "tire": {
        "AMFS": "amfs.yaml",
        "PNI": "pni.yaml",
        "AlignedPNI": "alignedpni_tiny.yaml",
        "AlignedPatchcore": "alignedpatchcore_tiny.yaml",
    },
}


def _datamodule(name: str, tiny_root: Path):
    from anomalib_ext.data import MVTecLikeFolder, SyntheticGPD

    if name == "tiny":
        return SyntheticGPD(
            root=tiny_root,
            num_categories=1,
            generated_size=128,
            train_count=6,
            test_good_count=3,
            defects_per_type=2,
            train_batch_size=4,
            eval_batch_size=4,
            num_workers=0,
        ), 128
    return MVTecLikeFolder(
        root=SHARED, category="tire", train_batch_size=8, eval_batch_size=8, num_workers=0
    ), 256


def _raw(model, images):
    """Raw scores and maps in the input frame (before the redesign PNI had no ``predict_raw``)."""
    if hasattr(model, "predict_raw"):
        return model.predict_raw(images)
    return model.model(images)._asdict()


def run(set_name: str, model_name: str, config: str, out: Path, tiny_root: Path) -> dict:
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext.benchmarking import build_model
    from anomalib_ext.data.mvtec_like import resize_like_preprocessor
    from anomalib_ext.host_steps import predict_end_to_end

    datamodule, size = _datamodule(set_name, tiny_root)
    seed_everything(0)
    model = build_model(REPO / "configs" / "models" / config, size=size, seed=0)
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(default_root_dir=root, logger=False, enable_progress_bar=False)
        engine.fit(model=model, datamodule=datamodule)
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    model.eval()
    raw_scores, raw_maps, scores, maps, paths = [], [], [], [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            images = resize_like_preprocessor(batch.image, (size, size))
            raw = _raw(model, model.pre_processor.transform(batch.image))
            deployed = predict_end_to_end(model, images)
            raw_scores.append(raw["pred_score"].reshape(-1))
            raw_maps.append(raw["anomaly_map"].reshape(len(images), size, size))
            scores.append(deployed.pred_score.reshape(-1))
            maps.append(deployed.anomaly_map.reshape(len(images), size, size))
            paths.extend(str(Path(p).relative_to(Path(p).parents[1])) for p in batch.image_path)
    np.savez_compressed(
        out / f"{set_name}__{model_name}.npz",
        raw_score=torch.cat(raw_scores).numpy(),
        raw_map=torch.cat(raw_maps).numpy().astype(np.float32),
        score=torch.cat(scores).numpy(),
        map=torch.cat(maps).numpy().astype(np.float32),
        paths=np.array(paths),
    )
    return {key: float(value) for key, value in metrics.items()}


def summarise(folder: Path) -> None:
    """``summary.json``: per image, the scores and map statistics (small enough for docs/results)."""
    summary = {}
    for path in sorted(folder.glob("*.npz")):
        run = np.load(path)
        summary[path.stem] = {
            "paths": run["paths"].tolist(),
            **{key: run[key].astype(float).tolist() for key in ("raw_score", "score")},
            **{
                f"{key}_{name}": getattr(np, name)(run[key].reshape(len(run[key]), -1).astype(np.float64), axis=1).tolist()
                for key in ("raw_map", "map")
                for name in ("mean", "std", "max")
            },
        }
    (folder / "summary.json").write_text(json.dumps(summary))


def compare_summaries(before: Path, after: Path) -> int:
    """As :func:`compare`, from two ``summary.json`` (scores exactly, maps by their per-image statistics)."""
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    worst = 0.0
    for run in sorted(set(a) & set(b)):  # runs made on both sides (one side may hold more sets)
        assert a[run]["paths"] == b[run]["paths"], f"{run}: other test images"
        diffs = {k: float(np.abs(np.array(a[run][k]) - np.array(b[run][k])).max()) for k in a[run] if k != "paths"}
        worst = max(worst, *diffs.values())
        print(f"{run:28s} largest difference {max(diffs.values()):.2e} ({max(diffs, key=diffs.get)})")
    print(f"largest difference: {worst:.2e}")
    return int(worst > 1e-4)


def compare(before: Path, after: Path) -> int:
    """Largest differences per run; exit 1 when any score or map differs by more than 1e-4."""
    if before.suffix == ".json":
        return compare_summaries(before, after)
    worst = 0.0
    metrics = json.loads((before / "metrics.json").read_text()), json.loads((after / "metrics.json").read_text())
    for path in sorted(before.glob("*.npz")):
        a, b = np.load(path), np.load(after / path.name)
        assert list(a["paths"]) == list(b["paths"]), f"{path.name}: other test images"
        diffs = {key: float(np.abs(a[key] - b[key]).max()) for key in ("raw_score", "raw_map", "score", "map")}
        key = path.stem
        metric_diff = max(abs(metrics[0][key][m] - metrics[1][key][m]) for m in metrics[0][key])
        worst = max(worst, *diffs.values())
        print(f"{key:28s} " + " ".join(f"{k}={v:.2e}" for k, v in diffs.items()) + f" metrics={metric_diff:.2e}")
    print(f"largest difference: {worst:.2e}")
    return int(worst > 1e-4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sets", nargs="+", default=list(RUNS))
    parser.add_argument("--models", nargs="+", default=list(RUNS["tiny"]))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--summarise", type=Path, metavar="FOLDER", help="write FOLDER/summary.json from its runs")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.summarise:
        summarise(args.summarise)
        return 0
    from anomalib_ext.data.synthetic_gpd import generate_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "metrics.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny_root = generate_dataset(
            Path(tmp) / "data", num_categories=1, image_size=128, train_count=6, test_good_count=3, defects_per_type=2
        )
        for set_name in args.sets:
            for model_name in args.models:
                print(f"{set_name} {model_name}", flush=True)
                results[f"{set_name}__{model_name}"] = run(
                    set_name, model_name, RUNS[set_name][model_name], args.out, tiny_root
                )
                results_file.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
