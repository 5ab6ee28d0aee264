r"""Where does an aligned model lose against its plain twin? Defects the reference frame cannot see.

The ``align`` host step warps each test image into the reference image's frame; the model sees only
that frame, and its map is warped back (edge values repeated outside it). A defect on a part of the
photograph that the reference does not show is therefore never scored. For every test image of a
category this tool records, from an aligned model's checkpoint:

- whether alignment succeeded, and the share of the photograph outside the reference frame;
- for anomalous images, the share of the defect's pixels that land outside the reference frame;
- the aligned model's image score and, with ``--plain-ckpt``, its plain twin's, each as its rank among
  the normal test images' scores (the share of normal images scoring below: 1.0 = above every normal one).

It reads the test split: a diagnosis, it chooses nothing.

    python experiments/amfs/diagnose_align_coverage.py --model AlignedPNI --ckpt results/pni_sgpd/work/alignedpni__.../model.ckpt \
        --plain-model PNI --plain-ckpt results/pni_sgpd/work/pni__.../model.ckpt \
        --root ~/.cache/anomalib_ext/synthetic_gpd/<key> --category p001 --out coverage.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

BORDER_PX = 16  # two feature cells at stride 8: "at the border" for where a map peaks
BANDS_PX = (8, 16, 32)  # border bands left out of the image score, for the "is it the border?" check


def scores_and_peaks(module: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Image scores as the deployed model gives them, where each map peaks, maxima without border bands.

    The maxima leave out a border band of each width in :data:`BANDS_PX`. Normalised scores are a monotonic
    map of the raw ones, so ranks are those of the test step's scores.
    The peak is given as its distance in pixels to the nearest image border (input frame).
    """
    from anomalib_ext.host_steps import predict_end_to_end

    parts: dict[str, list[torch.Tensor]] = {"score": [], "peak": [], **{f"inner{b}": [] for b in BANDS_PX}}
    for chunk in images.split(8):
        output = predict_end_to_end(module, chunk)
        maps = output.anomaly_map.reshape(len(chunk), *chunk.shape[-2:])
        height, width = maps.shape[-2:]
        flat = maps.flatten(1).argmax(1)
        rows, columns = flat // width, flat % width
        parts["peak"].append(torch.stack([rows, columns, height - 1 - rows, width - 1 - columns]).amin(0))
        parts["score"].append(output.pred_score.flatten())
        for band in BANDS_PX:
            parts[f"inner{band}"].append(maps[:, band:-band, band:-band].flatten(1).amax(1))
    return {key: torch.cat(values) for key, values in parts.items()}


def rank_among_normals(scores: torch.Tensor, normal: torch.Tensor) -> list[float]:
    """For every image, the share of normal images scoring strictly below it."""
    reference = scores[normal]
    return [float((reference < s).float().mean()) for s in scores]


def outside_share(mask: np.ndarray, homography: np.ndarray, size: tuple[int, int]) -> float:
    """The share of ``mask``'s pixels whose centres the homography (input -> reference) maps outside the frame."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    points = np.stack([xs + 0.5, ys + 0.5, np.ones(len(xs))])
    mapped = homography @ points
    x, y = mapped[0] / mapped[2], mapped[1] / mapped[2]
    inside = (x >= 0) & (x < size[1]) & (y >= 0) & (y < size[0])
    return float(1.0 - inside.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="AlignedPNI")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--plain-model")
    parser.add_argument("--plain-ckpt")
    parser.add_argument("--root", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out")
    args = parser.parse_args()

    from anomalib_ext.data.mvtec_like import make_mvtec_like_samples, read_binary_mask, read_resized
    from anomalib_ext.deploy.checkpoint import load_model
    from anomalib_ext.host_steps import host_steps_of

    size = (args.size, args.size)
    samples = make_mvtec_like_samples(Path(args.root).expanduser() / args.category, args.category)
    test = samples[samples.split == "test"].reset_index(drop=True)
    images = torch.cat([read_resized(p, size) for p in test.image_path])
    normal = torch.tensor((test.label_index == 0).to_numpy())

    aligned_model = load_model(args.model, args.ckpt).eval()
    aligner = host_steps_of(aligned_model).steps[0].aligner
    _, homographies, oks = aligner.align(images)
    frame = np.ones(size, bool)
    rows = []
    for i, sample in test.iterrows():
        mask_path = sample.mask_path if isinstance(sample.mask_path, str) and sample.mask_path else None
        mask = None
        if mask_path:
            full = torch.from_numpy(read_binary_mask(mask_path)).float()[None, None]
            mask = torch.nn.functional.interpolate(full, size=size, mode="nearest")[0, 0].numpy() > 0.5
        rows.append({
            "image": Path(sample.image_path).name,
            "defect_type": Path(sample.image_path).parent.name,
            "aligned": bool(oks[i]),
            "photo_outside": outside_share(frame, homographies[i], size),
            "defect_outside": outside_share(mask, homographies[i], size) if mask is not None else None,
        })
    models = {"aligned": aligned_model}
    if args.plain_ckpt:
        models["plain"] = load_model(args.plain_model, args.plain_ckpt).eval()
    for name, module in models.items():
        values = scores_and_peaks(module, images)
        ranks = rank_among_normals(values["score"], normal)
        for i, row in enumerate(rows):
            row[f"{name}_rank"] = ranks[i]
            row[f"{name}_peak_at_border"] = bool(values["peak"][i] < BORDER_PX)
            row[f"{name}_score"] = float(values["score"][i])
            for band in BANDS_PX:
                row[f"{name}_inner{band}"] = float(values[f"inner{band}"][i])
    report = {"ckpt": args.ckpt, "plain_ckpt": args.plain_ckpt, "category": args.category, "rows": rows}
    summary = summarise(rows)
    report["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def summarise(rows: list[dict]) -> dict:
    """Per defect type and by coverage: images, alignment failures, shares outside the frame, mean ranks.

    Anomalous images are also split by whether more than 5% of their defect falls outside the reference frame.
    """
    import pandas as pd

    frame = pd.DataFrame(rows)
    rank_columns = [c for c in frame.columns if c.endswith("_rank")]
    by_type = frame.groupby("defect_type").agg(
        images=("image", "size"),
        failures=("aligned", lambda a: int((~a).sum())),
        photo_outside=("photo_outside", "mean"),
        defect_outside=("defect_outside", "mean"),
        **{c: (c, "mean") for c in rank_columns},
        **{c: (c, "mean") for c in frame.columns if c.endswith("_peak_at_border")},
    )
    anomalous = frame[frame.defect_type != "good"].copy()
    anomalous["defect_partly_outside"] = anomalous.defect_outside > 0.05
    by_coverage = anomalous.groupby("defect_partly_outside").agg(
        images=("image", "size"),
        **{c: (c, "mean") for c in rank_columns},
        **{f"{c}_top": (c, lambda r: float((r >= 1.0).mean())) for c in rank_columns},
    )
    from torchmetrics.functional.classification import binary_auroc

    labels = torch.tensor((frame.defect_type != "good").to_numpy()).int()
    score_columns = [c for c in frame.columns if c.endswith("_score") or "_inner" in c]
    image_auroc = {c: round(float(binary_auroc(torch.tensor(frame[c].to_numpy()), labels)), 4) for c in score_columns}
    return {
        "image_AUROC": image_auroc,  # ``*_innerN``: the map maximum with an N px border band left out
        "by_defect_type": json.loads(by_type.round(4).to_json(orient="index")),
        "anomalous_by_defect_outside_over_5pct": json.loads(by_coverage.round(4).to_json(orient="index")),
    }


if __name__ == "__main__":
    main()
