"""Benchmark our greedy k-center coreset against anomalib's KCenterGreedy on real Patchcore features.

Features: anomalib's PatchcoreModel embedding (its feature extractor, 3x3 local aggregation,
layer concatenation) over the training images of an MVTec-like category. Both samplers get the same
features and the same sampling ratio; we report wall time and the max-min coverage radius measured
in the full feature space (lower is better).

    python experiments/house/bench_coreset.py --images ../shared/data/magnetic_tile/train/good --limit 335 --size 256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def patchcore_embeddings(folder: Path, limit: int, size: int, backbone: str, batch: int = 16) -> torch.Tensor:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from torchvision.transforms.v2.functional import normalize

    from anomalib_ext.backbones import enable_offline_weights
    from anomalib_ext.data.mvtec_like import IMAGE_EXTENSIONS, read_rgb

    enable_offline_weights()
    model = PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone=backbone, pre_trained=True).eval()
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    chunks = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            images = torch.stack([
                torch.from_numpy(read_rgb(p)).permute(2, 0, 1).float() / 255
                for p in _same_size(paths[start : start + batch], size)
            ])
            images = normalize(images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
            features = model.feature_extractor(images)
            features = {layer: model.feature_pooler(f) for layer, f in features.items()}
            embedding = model.generate_embedding(features)
            chunks.append(model.reshape_embedding(embedding))
    return torch.cat(chunks)


def _same_size(paths, size):
    import tempfile

    import cv2

    from anomalib_ext.data.mvtec_like import read_rgb

    out = []
    tmp = Path(tempfile.mkdtemp())
    for p in paths:
        target = tmp / (p.stem + ".png")
        cv2.imwrite(str(target), cv2.resize(read_rgb(p)[..., ::-1], (size, size), interpolation=cv2.INTER_AREA))
        out.append(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=335)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--backbone", default="tf_efficientnet_lite2")
    parser.add_argument("--skip-anomalib", action="store_true", help="time only ours (anomalib's takes minutes)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--features",
        type=Path,
        default=None,
        help="cache of the extracted features (.pt): reused if present",
    )
    args = parser.parse_args()

    from anomalib.models.components import KCenterGreedy

    from anomalib_ext.components import coverage_radius, greedy_coreset_indices

    if args.features is not None and args.features.is_file():
        features = torch.load(args.features)
    else:
        features = patchcore_embeddings(args.images, args.limit, args.size, args.backbone)
        if args.features is not None:
            torch.save(features, args.features)
    results = {
        "patches": features.shape[0],
        "dims": features.shape[1],
        "ratio": args.ratio,
        "threads": torch.get_num_threads(),
    }
    start = time.perf_counter()
    ours = greedy_coreset_indices(features, args.ratio, seed=0, progress=False)
    results["ours_s"] = time.perf_counter() - start
    results["ours_radius"] = coverage_radius(features, features[ours])
    if not args.skip_anomalib:
        torch.manual_seed(0)
        start = time.perf_counter()
        theirs = KCenterGreedy(features, args.ratio).select_coreset_idxs()
        results["anomalib_s"] = time.perf_counter() - start
        results["anomalib_radius"] = coverage_radius(features, features[theirs])
        results["speedup"] = results["anomalib_s"] / results["ours_s"]
        results["radius_ratio"] = results["ours_radius"] / results["anomalib_radius"]
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
