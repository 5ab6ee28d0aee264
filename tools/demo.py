"""The main job, end to end on the built-in SyntheticGPD data (no network needed).

train (anomalib Engine) -> test metrics -> OpenVINO export (anomalib_ext.deploy) -> batched OpenVINO
inference with overlays.

Default model: AMFS (ORB alignment + pyramid-block memory banks + F_fusion) on the offline ImageNet
backbone ``tf_efficientnet_lite2``; ``--model patchcore`` runs anomalib's Patchcore with the same
backbone for comparison. OpenVINO inference runs the host steps too (alignment for AMFS).

    python tools/demo.py --out results/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/demo"))
    parser.add_argument("--category", default="p001")
    parser.add_argument("--model", choices=["amfs", "patchcore"], default="amfs")
    parser.add_argument("--input-size", type=int, default=None, help="default: 512 for AMFS (paper), 256 for Patchcore")
    parser.add_argument("--data-root", type=Path, default=None, help="SyntheticGPD folder (default: user cache)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--infer-images", type=int, default=8, help="test images to run through OpenVINO")
    parser.add_argument("--small", action="store_true", help="tiny data (for tests): 8 train images, 2 per defect type")
    args = parser.parse_args()

    from anomalib.engine import Engine

    from anomalib_ext import register
    from anomalib_ext.benchmarking import build_model
    from anomalib_ext.data import SyntheticGPD
    from anomalib_ext.deploy import export_openvino, run_inference

    register()  # offline ImageNet weights for timm, our datamodules by name
    sizes = (
        {"train_count": 8, "test_good_count": 4, "defects_per_type": 2, "num_categories": 1, "generated_size": 256}
        if args.small
        else {}
    )
    datamodule = SyntheticGPD(
        root=args.data_root,
        category=args.category,
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=args.num_workers,
        **sizes,
    )
    size = args.input_size or (512 if args.model == "amfs" else 256)
    if args.small:
        size = args.input_size or 128
    small = {"fusion": {"epochs": 10}, "coreset_sampling_ratio": 0.1} if args.small and args.model == "amfs" else {}
    config = "configs/models/amfs.yaml" if args.model == "amfs" else "configs/models/patchcore_lite2.yaml"
    model = build_model({"config": config, "init_args": small}, size=size)
    engine = Engine(default_root_dir=args.out, logger=False, enable_progress_bar=True)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    # Our export: the same graph as anomalib's, with a dynamic batch for every model, plus the
    # metadata (and AMFS's alignment reference) the inferencer needs.
    xml_dir = export_openvino(model, args.out / "openvino", (size, size)).parent
    test_images = sorted(Path(datamodule.root, args.category, "test").rglob("*.jpg"))
    picks = test_images[:: max(1, len(test_images) // args.infer_images)][: args.infer_images]
    infer_in = args.out / "infer_inputs"
    infer_in.mkdir(parents=True, exist_ok=True)
    for p in picks:
        (infer_in / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    results = run_inference(xml_dir, infer_in, args.out / "openvino_predictions")
    summary = {
        "model": args.model,
        "input_size": size,
        "data": str(datamodule.root),
        "category": args.category,
        "fit_seconds": round(fit_s, 1),
        "test_metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "openvino_model": str(xml_dir / "model.xml"),
        "openvino_predictions": {Path(r.path).name: round(r.prediction.score, 4) for r in results if r.prediction},
        "errors": [f"{r.path}: {r.error}" for r in results if r.error],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"Overlays: {args.out / 'openvino_predictions' / 'overlays'}")


if __name__ == "__main__":
    main()
