r"""How PNI's refiner learns with longer training: its loss curves and what each epoch would score.

Retrains the refinement network of a fitted PNI checkpoint (the coarse model is kept as fitted) with
training images held out for validation (``refine_validation``), for a fixed number of epochs, and
records after every epoch:

- the training loss and the loss on the held-out images' synthetic defects (what early stopping reads);
- on the category's test split, only as a report: the final map's image AUROC, pixel AUROC and pixel AP,
  and the refiner's own map's image AUROC, with the coarse map's (before refinement) beside them.

It answers whether the paper's 3 epochs leave the refiner short of its task, and whether training it
until the validation loss stops falling helps on real defects. The epoch that early stopping would keep
(``--patience``) is read from the validation loss alone; the test columns never choose anything.

    python experiments/pni/pni_refiner_curve.py --ckpt results/pni_real/work/pni__tire__256__s0/.../model.ckpt \
        --category tire --epochs 30 --out docs/results/pni/refiner_curve/tire_s0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pni_ablation import auroc, average_precision, load, mask_at  # tools/ is the script's directory


def _early_stop_epoch(validation: list[float], patience: int) -> int:
    """The epoch (0-based) that stopping after ``patience`` epochs without a lower validation loss keeps."""
    best = 0
    for epoch, loss in enumerate(validation):
        if loss < validation[best]:
            best = epoch
        if epoch - best >= patience:
            break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--validation", type=int, default=32, help="training images held out")
    parser.add_argument("--patience", type=int, default=2, help="for the epoch early stopping would keep")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()

    from anomalib_ext.data.mvtec_like import make_mvtec_like_samples, read_resized

    model = load(args.ckpt)
    samples = make_mvtec_like_samples(Path(args.root) / args.category, args.category)
    size = (args.size, args.size)
    train = samples[samples.split == "train"]
    train = train[train.label_index == 0].sort_values("image_path")
    train_images = (torch.cat([read_resized(p, size) for p in train.image_path]) * 255).round().to(torch.uint8)
    test = samples[samples.split == "test"].reset_index(drop=True)
    images = torch.cat([read_resized(p, size) for p in test.image_path])
    mask = (torch.stack([mask_at(m, size) for m in test.mask_path]) > 0.5).flatten()
    labels = torch.tensor((test.label_index == 1).to_numpy())
    with torch.no_grad():
        coarse = torch.cat([model.coarse_map(chunk) for chunk in images.split(8)])
    pixels = bool(mask.any())

    def scores(maps: torch.Tensor, prefix: str) -> dict:
        row = {f"{prefix}_image_AUROC": auroc(maps.flatten(1).amax(1), labels)}
        if pixels:
            row[f"{prefix}_pixel_AUROC"] = auroc(maps.flatten(), mask)
            row[f"{prefix}_pixel_AP"] = average_precision(maps.flatten(), mask)
        return row

    epochs: list[dict] = []
    start = time.perf_counter()

    def record(history) -> None:
        with torch.no_grad():
            pairs = list(zip(images.split(8), coarse.split(8), strict=True))
            alone = torch.cat([model.refiner.refine(i, c) for i, c in pairs])
            final = torch.cat([model.refiner(i, c) for i, c in pairs])
        epochs.append({
            "epoch": len(history.train_loss),
            "seconds": round(time.perf_counter() - start, 1),
            "train_loss": history.train_loss[-1],
            "validation_loss": history.validation_loss[-1] if history.validation_loss else None,
            **scores(final, "final"),
            "refined_alone_image_AUROC": auroc(alone.flatten(1).amax(1), labels),
        })
        print(json.dumps(epochs[-1]), flush=True)

    model.fit_refinement(
        train_images,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        validation=args.validation,
        patience=args.epochs,  # the whole curve; the early-stopping epoch is read from it below
        seed=args.seed,
        on_epoch_end=record,
    )
    validation = [row["validation_loss"] for row in epochs]
    report = {
        "ckpt": args.ckpt,
        "category": args.category,
        "settings": vars(args),
        "training_images": len(train_images) - args.validation,
        "steps_per_epoch": -(-(len(train_images) - args.validation) // args.batch_size),
        "coarse": scores(coarse, "coarse"),
        "early_stop_epoch": _early_stop_epoch(validation, args.patience) + 1 if args.validation else None,
        "epochs": epochs,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("coarse", "early_stop_epoch", "steps_per_epoch")}))


if __name__ == "__main__":
    main()
