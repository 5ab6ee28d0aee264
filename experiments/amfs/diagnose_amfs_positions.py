"""Where do AMFS's positional scores go wrong? Per-place statistics of a trained positional AMFS.

Fits AMFS (positional matching, ``configs/models/amfs.yaml``) on one SyntheticGPD category and keeps, in
the aligned frame, every test image's raw positional distances and the training images' leave-one-out
distances. It then reports, without training again:

- image AUROC (all defects and the letter subset) of the worst patch under each per-place normalisation:
  ``raw`` distance, ``baseline`` (minus the leave-one-out mean per place) and ``zscore`` (also over the
  leave-one-out spread, floored at ``floor`` times its median over places);
- for every normal test image: where its worst patch lies (ring = feature cells from the frame's border)
  and how much of that cell the photograph covers (the rest is filled from the reference by alignment);
- the leave-one-out mean and spread per ring (how much normal images vary near the border vs inside).

This is a diagnosis tool: it reads the test split, so nothing it shows may choose a default by itself.

    python experiments/amfs/diagnose_amfs_positions.py --category p001 --out results/diagnosis/p001.npz
    python experiments/amfs/diagnose_amfs_positions.py --category p005 --word-grid-categories 2 --out results/diagnosis/p005.npz
    python experiments/amfs/diagnose_amfs_positions.py --report results/diagnosis/p001.npz   # report only, no training
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def collect(category: str, out: Path, size: int, word_grid_categories: int) -> None:
    """Fit AMFS on ``category`` and save raw positional distances, leave-one-out distances and coverage."""
    import cv2
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_ext import register
    from anomalib_ext.benchmarking.build import build_datamodule, build_model

    register()
    seed_everything(0)
    init_args = {"category": category, "train_batch_size": 8, "eval_batch_size": 8, "num_workers": 2}
    if word_grid_categories:
        init_args["word_grid_categories"] = word_grid_categories
    data = build_datamodule({"class_path": "anomalib_ext.data.SyntheticGPD", "init_args": init_args})
    model = build_model("configs/models/amfs.yaml", size=size, seed=0)
    engine = Engine(default_root_dir=out.parent / "work", logger=False, enable_progress_bar=False, accelerator="cpu")
    engine.fit(model=model, datamodule=data)
    network = model.model
    if network.uses_global_bank:
        msg = f"AMFS fell back to a global bank on {category} ({model.fallback_reason}): nothing to diagnose."
        raise SystemExit(msg)
    bank = network.positional
    hw, d, n = bank.features.shape
    side = round(hw**0.5)
    with torch.no_grad():
        training = bank.features.reshape(side, side, d, n).permute(3, 2, 0, 1).contiguous()
        leave_one_out = bank.leave_one_out(training)
        aligner = model.host_steps().steps[0].aligner
        distances, labels, paths, coverage = [], [], [], []
        for batch in data.test_dataloader():
            aligned, homographies, _ = aligner.align(batch.image)
            distances.append(bank.nearest(network.embed_full(network.fill_unseen(aligned)[0])))
            labels += batch.gt_label.int().tolist()
            paths += [str(p) for p in batch.image_path]
            ones = np.ones(batch.image.shape[-2:], np.float32)
            coverage += [
                cv2.warpPerspective(ones, h, (size, size), flags=cv2.INTER_NEAREST, borderValue=0) for h in homographies
            ]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        loo=leave_one_out.numpy(),
        test=torch.cat(distances).numpy(),
        labels=np.array(labels),
        paths=np.array(paths),
        cover=np.stack(coverage).astype(np.uint8),
    )


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image AUROC by pairwise comparison (ties count half)."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive[:, None] > negative[None]).mean()
    ties = (positive[:, None] == negative[None]).mean()
    return float(greater + 0.5 * ties)


def report(path: Path, floors: list[float]) -> str:
    """The text report of a saved diagnosis (see the module docstring)."""
    import torch
    import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]

    saved = np.load(path)
    loo, test, labels, paths, cover = (saved[k] for k in ("loo", "test", "labels", "paths", "cover"))
    count, side = len(test), test.shape[-1]
    mean, spread = loo.mean(0), loo.std(0, ddof=1)
    letter = np.array(["/letter/" in p or "/good/" in p for p in paths])
    variants = {"raw": test, "baseline": test - mean}
    for floor in floors:
        variants[f"zscore (floor {floor} x median)"] = (test - mean) / np.maximum(spread, floor * np.median(spread))
    header = f"{path}: {count} test images ({int(labels.sum())} defective), {len(loo)} training images"
    lines = [f"{header}, {side}x{side} cells"]
    lines.append("image AUROC of the worst patch: all / letter subset")
    for name, maps in variants.items():
        worst = maps.reshape(count, -1).max(1)
        lines.append(f"  {name:32s} {auroc(worst, labels):.4f} / {auroc(worst[letter], labels[letter]):.4f}")
    yy, xx = np.mgrid[:side, :side]
    ring = np.minimum(np.minimum(yy, xx), np.minimum(side - 1 - yy, side - 1 - xx))
    cell = cover.shape[-1] // side
    covered = cover.reshape(count, side, cell, side, cell).mean((2, 4))
    # Would ignoring what the photograph does not show help? Cells not fully covered, grown by `grow` cells
    # (the fill seam reaches further through the receptive field), are left out of the worst patch.
    zscore = (test - mean) / np.maximum(spread, np.median(spread))
    unseen = torch.from_numpy(covered < 0.999).float()[:, None]
    for grow in range(3):
        grown = F.max_pool2d(unseen, 2 * grow + 1, stride=1, padding=grow)[:, 0].numpy() > 0  # dilation
        worst = np.where(grown, -np.inf, zscore).reshape(count, -1).max(1)
        lines.append(
            f"  zscore (floor 1.0), unseen cells +{grow} ignored  {auroc(worst, labels):.4f} / "
            f"{auroc(worst[letter], labels[letter]):.4f}",
        )
    lines.append("normal test images, worst patch under 'baseline': cell (y, x), ring, photo coverage of that cell")
    shifted = variants["baseline"]
    for i in np.flatnonzero(labels == 0):
        y, x = np.unravel_index(shifted[i].argmax(), shifted[i].shape)
        lines.append(
            f"  {Path(paths[i]).parent.name}/{Path(paths[i]).name}: ({y}, {x}) ring {ring[y, x]} "
            f"coverage {covered[i, y, x]:.2f} score {shifted[i, y, x]:.2f}",
        )
    lines.append("leave-one-out distance per ring: mean / spread (training images)")
    lines.extend(f"  ring {r}: {mean[ring == r].mean():.2f} / {spread[ring == r].mean():.2f}" for r in range(8))
    lines.append(f"  rings >= 8: {mean[ring >= 8].mean():.2f} / {spread[ring >= 8].mean():.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="p001")
    parser.add_argument("--word-grid-categories", type=int, default=0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("results/diagnosis/p001.npz"))
    parser.add_argument("--report", type=Path, help="report a saved diagnosis instead of training")
    parser.add_argument("--floors", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    if args.report is None:
        collect(args.category, args.out, args.size, args.word_grid_categories)
    print(report(args.report or args.out, args.floors))


if __name__ == "__main__":
    main()
