"""Why does AMFS's global-bank fallback sit below anomalib's Patchcore? Its pieces, one at a time.

The fallback is PatchCore rebuilt from the project's pieces (``PatchEmbedding``, ``MemoryBank`` with the
greedy coreset, ``reweighted_max``). This tool checks them against anomalib's ``PatchcoreModel``:

- ``--check embedding``: the patch features of a few training images from both (same backbone, layers,
  ImageNet normalisation); prints the largest absolute difference.
- ``--check storage``: AMFS keeps its training images until ``fit``. Rounding resized images to uint8
  adds a noise the (never rounded) test images do not have. Prints, for a few training images, the median
  shift of the patch features under uint8 and float16 rounding, next to the median nearest-neighbour
  distance between patches of different images; then (``--seeds``) the fallback's image AUROC with
  float and uint8 training images, built as the AMFS fallback builds it (1% coreset, seed = the coreset
  start, k = 9 re-weighting), on the category's whole test split.

This is a diagnosis tool: it reads the test split, so nothing it shows may choose a default by itself.

    python experiments/amfs/diagnose_amfs_fallback.py --category tire --check embedding
    python experiments/amfs/diagnose_amfs_fallback.py --category tire --check storage --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import torch


def load_images(paths: list[str], size: int) -> torch.Tensor:
    """(N, 3, size, size) images in [0, 1], resized as the models' pre-processors resize them."""
    from anomalib_ext.data.mvtec_like import read_resized

    return torch.cat([read_resized(p, (size, size)) for p in paths])


def images_in(folder: Path) -> list[str]:
    return sorted(glob.glob(str(folder / "*")))  # ruff: ignore[glob] - a data folder


def check_embedding(train: Path, size: int) -> None:
    from anomalib.models import Patchcore

    from anomalib_ext.components.embedding import PatchEmbedding

    images = load_images(images_in(train)[:4], size)
    patchcore = Patchcore(backbone="tf_efficientnet_lite2", layers=["blocks.2", "blocks.4"], pre_trained=True).eval()
    ours = PatchEmbedding("tf_efficientnet_lite2", ("blocks.2", "blocks.4")).eval()
    with torch.no_grad():
        features = patchcore.model.feature_extractor(ours.normalize(images))
        pooled = {layer: patchcore.model.feature_pooler(f) for layer, f in features.items()}
        theirs = patchcore.model.generate_embedding(pooled)
        mine = ours(images)
    print(f"embedding {tuple(mine.shape)}: largest |ours - anomalib| = {(mine - theirs).abs().max().item():.6f}")


def embed(embedding: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embedding(chunk) for chunk in images.split(16)])


def check_storage(root: Path, size: int, seeds: list[int]) -> None:
    from sklearn.metrics import roc_auc_score

    from anomalib_ext.components.embedding import PatchEmbedding
    from anomalib_ext.components.memory_bank import MemoryBank

    embedding = PatchEmbedding().eval()
    train = load_images(images_in(root / "train" / "good"), size)
    as_uint8 = (train.clamp(0, 1) * 255).round() / 255
    sample = embed(embedding, train[:24])
    d = sample.shape[1]
    rows = {
        "uint8": embed(embedding, as_uint8[:24]),
        "float16": embed(embedding, train[:24].half().float()),
    }
    first, second = (part.permute(0, 2, 3, 1).reshape(-1, d) for part in (sample[:12], sample[12:]))
    neighbour = torch.cdist(first[::7], second).min(1).values.median().item()
    for name, rounded in rows.items():
        shift = (sample - rounded).norm(dim=1).median().item()
        print(f"{name} rounding: median feature shift {shift:.4f}; median NN distance between images {neighbour:.3f}")
    if not seeds:
        return
    test_paths = sorted(glob.glob(str(root / "test" / "*" / "*")))  # ruff: ignore[glob] - a data folder
    labels = [0 if Path(p).parent.name == "good" else 1 for p in test_paths]
    test = embed(embedding, load_images(test_paths, size))
    queries = test.permute(0, 2, 3, 1).reshape(1, -1, d)
    b = len(test)
    stored = [embed(embedding, images) for images in (train, as_uint8)]  # the same for every coreset start
    for seed in seeds:
        aurocs = []
        for features in stored:
            bank = MemoryBank()
            bank.fit(features.permute(0, 2, 3, 1).reshape(-1, d), 0.01, seed=seed, progress=False)
            nearest, index = bank.nearest(queries)
            scores = bank.reweighted_max(
                queries.reshape(1, b, -1, d), nearest.reshape(1, b, -1), index.reshape(1, b, -1), num_neighbors=9
            )[0]
            aurocs.append(roc_auc_score(labels, scores.numpy()))
        print(f"seed {seed}: image AUROC float {aurocs[0]:.4f}  uint8 {aurocs[1]:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data", help="MVTec-layout data root")
    parser.add_argument("--category", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--check", choices=("embedding", "storage"), required=True)
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="coreset starts for the AUROC check")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from anomalib_ext import register

    register()  # offline backbone weights for anomalib's Patchcore
    torch.set_num_threads(args.threads)
    root = Path(args.root) / args.category
    if args.check == "embedding":
        check_embedding(root / "train" / "good", args.size)
    else:
        check_storage(root, args.size, args.seeds)


if __name__ == "__main__":
    main()
