"""AMFS vs anomalib's Patchcore (same backbone and input size) and AMFS ablations, through anomalib's Engine.

Each (run, category) is trained once and tested on the full test set and on the subsets asked for
(``letter``: semantic defects only; ``small``: defects under 1% of the image). Writes ``results.csv``
and ``results.md`` (means over categories) to ``--out``.

    python tools/bench_amfs.py --out results/amfs_sgpd --runs patchcore amfs --subsets full letter small
    python tools/bench_amfs.py --out results/amfs_ablation --runs amfs amfs_noalign amfs_l1 amfs_l2 amfs_l4 amfs_max amfs_mean amfs_linear
    python tools/bench_amfs.py --out results/amfs_real --data ../shared/data --categories tire magnetic_tile kolektorsdd bottle --runs patchcore amfs

Patchcore's coreset is selected with our exact greedy k-center (``use_fast_coreset``, ~14x faster than
anomalib's KCenterGreedy, same algorithm) so the CPU benchmark finishes; say ``--anomalib-coreset`` to keep theirs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

RUNS = {
    "patchcore": ("patchcore", {}),
    "amfs": ("amfs", {}),
    "amfs_noalign": ("amfs", {"align": False}),
    "amfs_l1": ("amfs", {"levels": 1}),
    "amfs_l2": ("amfs", {"levels": 2}),
    "amfs_l4": ("amfs", {"levels": 4}),
    "amfs_max": ("amfs", {"scoring": "max"}),
    "amfs_mean": ("amfs", {"scoring": "mean"}),
    "amfs_linear": ("amfs", {"scoring": "linear"}),
    "amfs_softmax": ("amfs", {"scoring": "fusion_softmax"}),
    "amfs_first_ref": ("amfs", {"reference": "first"}),
    "amfs_cs10": ("amfs", {"coreset_sampling_ratio": 0.1}),
    "amfs_holdout_out": ("amfs", {"holdout_to_banks": False}),
    "amfs_edge_fill": ("amfs", {"fill_from_reference": False}),
    "amfs_mixed": ("amfs", {"fusion_anomalies": ("perlin", "cutpaste", "scar")}),
    "amfs_cutpaste": ("amfs", {"fusion_anomalies": ("cutpaste",)}),
}
SUBSETS = {"full": {}, "letter": {"defect_types": ["letter"]}, "small": {"max_defect_area": 0.01}}


def evaluator():
    from anomalib.metrics import AUPRO, AUROC, Evaluator

    return Evaluator(test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        # strict=False: sets with image labels only (bottle) report image metrics and skip pixel ones.
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ])


def make_model(kind: str, overrides: dict, size: int, backbone: str):
    from anomalib.models import Patchcore

    from anomalib_ext.models import AMFS

    layers = ["blocks.2", "blocks.4"]
    if kind == "patchcore":
        return Patchcore(backbone=backbone, layers=layers, coreset_sampling_ratio=0.01,
                         pre_processor=Patchcore.configure_pre_processor((size, size)), evaluator=evaluator())
    return AMFS(backbone=backbone, layers=layers, pre_processor=AMFS.configure_pre_processor((size, size)),
                evaluator=evaluator(), **overrides)


def make_data(args, category: str, subset: dict):
    from anomalib_ext.data import MVTecLikeFolder, SyntheticGPD

    common = {"category": category, "train_batch_size": 8, "eval_batch_size": 8, "num_workers": args.workers, **subset}
    if args.data is None:
        return SyntheticGPD(root=args.sgpd_root, **common)
    return MVTecLikeFolder(root=args.data, **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", default=["patchcore", "amfs"], choices=list(RUNS))
    parser.add_argument("--subsets", nargs="+", default=["full"], choices=list(SUBSETS))
    parser.add_argument("--data", type=Path, default=None, help="MVTec-like root (default: SyntheticGPD)")
    parser.add_argument("--sgpd-root", type=Path, default=None)
    parser.add_argument("--categories", nargs="+", default=["p001", "p002", "p003", "p004"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--backbone", default="tf_efficientnet_lite2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--anomalib-coreset", action="store_true")
    args = parser.parse_args()

    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext import register
    from anomalib_ext.components import use_fast_coreset

    register()
    if not args.anomalib_coreset:
        use_fast_coreset()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs:
        kind, overrides = RUNS[run]
        for category in args.categories:
            seed_everything(0)
            model = make_model(kind, overrides, args.size, args.backbone)
            engine = Engine(default_root_dir=args.out / "work", logger=False, enable_progress_bar=False)
            data = make_data(args, category, {})
            start = time.perf_counter()
            engine.fit(model=model, datamodule=data)
            fit_s = time.perf_counter() - start
            for subset in args.subsets:
                subset_data = data if subset == "full" else make_data(args, category, SUBSETS[subset])
                metrics = engine.test(model=model, datamodule=subset_data, verbose=False)[0]
                row = {"run": run, "category": category, "subset": subset, "fit_s": round(fit_s, 1),
                       **{k: round(float(v), 4) for k, v in metrics.items() if v is not None}}
                if kind == "amfs" and model.align and model._aligner is not None:  # noqa: SLF001
                    row["align_fallbacks"] = f"{model._aligner.failures}/{model._aligner.total}"  # noqa: SLF001
                rows.append(row)
                print(json.dumps(row), flush=True)
                pd.DataFrame(rows).to_csv(args.out / "results.csv", index=False)
            del model, engine
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    table = pd.DataFrame(rows)
    metric_cols = [c for c in table.columns if c.startswith(("image_", "pixel_"))]
    summary = table.groupby(["subset", "run"], sort=False)[metric_cols + ["fit_s"]].mean().round(3)
    (args.out / "results.md").write_text(summary.to_markdown() + "\n")
    print(summary.to_markdown())


if __name__ == "__main__":
    main()
