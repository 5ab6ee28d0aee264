r"""PNI's ablation (paper Table 2, and tau) from fitted checkpoints: every variant scored from one fit.

PNI's parts are fitted one after the other from the same seed, and none depends on another: the
coresets, the position histogram and the MLP do not change when a later part is switched off, and the
refinement is trained last on the finished coarse map. So a checkpoint of the full model holds every
variant of the ablation (tested: ``tests/unit/models/pni/test_model.py``), and this tool scores them all on
a category's test split without refitting:

- ``neither``: no distribution (every C_dist element allowed: the nearest c*_emb);
- ``position`` / ``neighbourhood``: one of the two distributions; ``both``: the paper's PNI w/o refine;
- ``both+refine``: the final map (what the model outputs); ``both+refine/coarse-image``: the final map for
  pixels, the image score from the map before refinement; ``refined-alone``: the refiner's own [0, 1]
  map, scored as if it were the detector; ``synthetic``: pixel AUROC / AP of the coarse, refined-alone and
  final maps on fresh synthetic defects of training images (has the refiner learnt its own task?);
- ``tau=x``: both + refinement with tau = x times the paper's 1 / (2 |C_dist|).

For each: image AUROC (image score = map max), pixel AUROC, AUPRO (FPR 0.3), pixel AP, computed as
anomalib's evaluator computes them (the ``both+refine`` row reproduces the benchmark job's numbers); for
the distributions, how selective they are on the test images (the share of C_dist allowed at a place,
and how often the nearest c*_emb is allowed: at 1.0 the variant scores exactly like ``neither``); for the
refinement, how much it adds to the maximum of normal and of anomalous images (``max_added_*``) and
what its refined term contributes there beyond the (1 - ratio) scaling, which alone changes no ranking
(``refined_term_*``). It reads the test
split: an ablation reports, it chooses nothing. ``--summary FILES`` prints mean ± std over the seeds.

    python experiments/pni/pni_ablation.py --ckpt results/pni_real/work/pni__tire__256__s0/.../model.ckpt --category tire \
        --out docs/results/pni/ablation/tire_s0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F  # ruff: ignore[lowercase-imported-as-non-lowercase]


def _unit(scores: torch.Tensor) -> torch.Tensor:
    # torchmetrics squashes scores outside [0, 1] with a sigmoid (every PNI score would become 1.0): rescale
    # to [0, 1] first, which keeps their order.
    return (scores - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-12)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(_unit(scores), labels.int()))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from torchmetrics.functional.classification import binary_average_precision

    return float(binary_average_precision(_unit(scores), labels.int()))


def mask_at(path: str, size: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) float mask at ``size`` (nearest neighbour, as the datamodule resizes masks); zeros if none."""
    from anomalib_ext.data.mvtec_like import read_binary_mask

    if not isinstance(path, str) or not path:
        return torch.zeros(1, *size)
    mask = torch.from_numpy(read_binary_mask(path)).float()[None, None]
    return torch.nn.functional.interpolate(mask, size=size, mode="nearest")[0]


def aupro(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Anomalib's AUPRO (FPR limit 0.3, the benchmark's) of (N, 1, H, W) maps and masks."""
    from anomalib.metrics.aupro import _AUPRO

    metric = _AUPRO(fpr_limit=0.3)
    metric.update(_unit(maps)[:, 0], masks[:, 0].int())  # (N, H, W), as anomalib gives it
    return float(metric.compute())


def load(ckpt: str, name: str = "PNI") -> torch.nn.Module:
    """The PNIModel of a checkpoint, loaded strictly through the deploy layer (tools never import models)."""
    return load_with_host_steps(ckpt, name)[0]


def load_with_host_steps(ckpt: str, name: str = "PNI") -> tuple[torch.nn.Module, object]:
    """The PNIModel of a ``name`` checkpoint and the host steps around it (AlignedPNI: ``align``; PNI: none)."""
    from anomalib_ext.deploy.checkpoint import load_model
    from anomalib_ext.host_steps import host_steps_of

    module = load_model(name, ckpt).eval()
    return module.model, host_steps_of(module)


def metrics(maps: torch.Tensor, image: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict:
    """The benchmark's four quality numbers (pixel ones only where the set has masks)."""
    pixels = bool(mask.any())
    return {
        "image_AUROC": auroc(image, labels),
        "pixel_AUROC": auroc(maps.flatten(), mask.flatten()) if pixels else None,
        "pixel_AUPRO": aupro(maps, mask) if pixels else None,
        "pixel_AP": average_precision(maps.flatten(), mask.flatten()) if pixels else None,
    }


def _model_of(ckpt: str) -> str:
    """The benchmark model name in a checkpoint path (``.../work/<model>__<set>__<size>__s<seed>/...``)."""
    for part in Path(ckpt).parts:
        if part.count("__") >= 3:
            return part.split("__")[0]
    return "?"


def summarise(paths: list[str]) -> str:
    """Mean ± std over seeds of every (category, variant) in the given JSON files, as a markdown table."""
    import pandas as pd

    rows = []
    for path in paths:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        for variant, values in report["variants"].items():
            rows.append({
                "dataset": f"{report['category']} ({_model_of(report['ckpt'])})",
                "variant": variant,
                **values,
            })
    frame = pd.DataFrame(rows)
    wanted = (
        "image_AUROC",
        "pixel_AUROC",
        "pixel_AUPRO",
        "pixel_AP",
        "allowed_share",
        "nearest_allowed",
        "nearest_allowed_defect",
        "refined_term_normal",
        "refined_term_anomalous",
        "coarse_pixel_AUROC",
        "refined_alone_pixel_AUROC",
        "final_pixel_AUROC",
    )
    columns = [c for c in wanted if c in frame.columns]
    grouped = frame.groupby(["dataset", "variant"], sort=False)[columns]
    mean, std, count = grouped.mean(), grouped.std(), grouped.size()
    lines = ["| dataset | variant | seeds | " + " | ".join(columns) + " |", "|:--|:--|--:|" + "--:|" * len(columns)]
    for key in mean.index:
        cells = [
            "-" if pd.isna(mean.loc[key, c]) else f"{mean.loc[key, c]:.3f} ± {std.loc[key, c]:.3f}" for c in columns
        ]
        lines.append(f"| {key[0]} | {key[1]} | {count.loc[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthetic_check(model: torch.nn.Module, samples, size: tuple[int, int], steps=None, count: int = 32) -> dict:
    """Has the refiner learnt its own task? Pixel AUROC / AP on fresh synthetic defects of training images.

    The refiner's training data (components.synthesis.synthesise_defects, the set's own content) drawn anew
    from another seed; the coarse map, the refiner's own map and the final map are each scored against the
    synthetic labels. High here but near chance on the real defects: it does not transfer; low here too: it
    has not learnt its task.
    """
    import numpy as np

    from anomalib_ext.components.synthesis import synthesise_defects
    from anomalib_ext.data.mvtec_like import read_resized

    train = samples[samples.split == "train"].sort_values("image_path").image_path.head(count)
    canvases = torch.cat([read_resized(p, size) for p in train])
    if steps:  # AlignedPNI's refiner was trained on aligned training images
        canvases = steps.prepare(canvases)[0]
    canvases = (canvases * 255).round().to(torch.uint8)
    synthetic, label = synthesise_defects(canvases, torch.arange(len(canvases)), np.random.default_rng(12345))
    with torch.no_grad():
        coarse = torch.cat([model.coarse_map(chunk) for chunk in synthetic.split(8)])
        pairs = list(zip(synthetic.split(8), coarse.split(8), strict=True))
        alone = torch.cat([model.refiner.refine(i, c) for i, c in pairs])
        final = torch.cat([model.refiner(i, c) for i, c in pairs])
    target = label.flatten() > 0.5
    row = {}
    for name, maps in (("coarse", coarse), ("refined_alone", alone), ("final", final)):
        row[f"{name}_pixel_AUROC"] = auroc(maps.flatten(), target)
        row[f"{name}_pixel_AP"] = average_precision(maps.flatten(), target)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", nargs="+", metavar="JSON", help="only print the mean ± std table of these reports")
    parser.add_argument("--ckpt")
    parser.add_argument(
        "--model",
        default="PNI",
        help="the checkpoint's class: PNI, or AlignedPNI (test images aligned first, maps scored in their own frame)",
    )
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--category")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--taus", type=float, nargs="*", default=[0.5, 2.0, 4.0], help="multiples of the paper's tau")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if args.summary:
        print(summarise(args.summary))
        return
    if not args.ckpt or not args.category:
        parser.error("--ckpt and --category are needed (or --summary)")

    from anomalib_ext.components.memory_bank import torch_knn
    from anomalib_ext.data.mvtec_like import make_mvtec_like_samples, read_resized

    model, steps = load_with_host_steps(args.ckpt, args.model)
    samples = make_mvtec_like_samples(Path(args.root) / args.category, args.category)
    test = samples[samples.split == "test"].reset_index(drop=True)
    size = (args.size, args.size)
    images = torch.cat([read_resized(p, size) for p in test.image_path])
    # AlignedPNI: every variant sees the aligned images and its maps go back to each input's frame before
    # scoring, as the benchmark's test step does (masks stay in the input frame).
    images, states = steps.prepare(images)

    def to_input_frame(maps: torch.Tensor) -> torch.Tensor:
        return steps.restore(maps, states) if steps else maps

    mask = torch.stack([mask_at(m, size) for m in test.mask_path]) > 0.5
    labels = torch.tensor((test.label_index == 1).to_numpy())
    mlp, position, paper_tau = model.mlp, model.position, model.score.threshold
    with torch.no_grad():  # the embedding and each place's nearest c*_emb are the same for every variant
        features = [model.embedding(chunk) for chunk in images.split(8)]
        nearest = [  # the same exact k-NN PNI uses (components.memory_bank); as the C_dist element it is allowed by
            model.score.clusters[
                torch_knn(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), model.score.targets, 1)[1][:, 0]
            ]
            for f in features
        ]
    # a place is on a defect if the defect mask touches its cell of the feature grid (AlignedPNI: the mask's
    # input-frame cell, off by the small pose change: a rough figure there)
    on_defect = F.adaptive_max_pool2d(mask.float(), features[0].shape[-2:])[:, 0].bool().flatten()

    def variant(use_mlp: bool, use_position: bool, tau: float | None = None) -> tuple[torch.Tensor, dict]:
        """Coarse maps of a variant, and how selective its p(c | Omega) is.

        The share of C_dist allowed at a place, and how often the nearest c*_emb of all is allowed (if
        always, the variant scores exactly like ``neither``).
        """
        model.mlp = mlp if use_mlp else None
        model.position = position if use_position else torch.empty(0)
        model.score.tau = tau
        maps, share, nearest_allowed = [], [], []
        try:
            with torch.no_grad():
                for f, near in zip(features, nearest, strict=True):
                    p = model.distributions(f)
                    maps.append(model.upsample(model.score(f, p), images.shape[-2:]))
                    ok = model.score.allowed(p.permute(0, 2, 3, 1).reshape(-1, p.shape[1]))
                    share.append(ok.float().mean(1))
                    nearest_allowed.append(ok.gather(1, near[:, None]).float()[:, 0])
        finally:
            model.mlp, model.position, model.score.tau = mlp, position, None
        nearest_allowed = torch.cat(nearest_allowed)  # places in (image, row, column) order, as on_defect
        stats = {
            "allowed_share": float(torch.cat(share).mean()),
            "nearest_allowed": float(nearest_allowed.mean()),
            # the same at the places a defect covers: where conditioning must exclude the nearest element
            "nearest_allowed_defect": float(nearest_allowed[on_defect].mean()) if on_defect.any() else None,
        }
        return torch.cat(maps), stats if (use_mlp or use_position) else {}

    def refined(coarse: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.refiner(i, c) for i, c in zip(images.split(8), coarse.split(8), strict=True)])

    def scored(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps in the input frame and their image scores (the map maximum), as the benchmark scores them."""
        maps = to_input_frame(maps)
        return maps, maps.flatten(1).amax(1)

    rows: dict[str, dict] = {}
    for name, use_mlp, use_position in (
        ("neither", False, False),
        ("position", False, True),
        ("neighbourhood", True, False),
        ("both", True, True),
    ):
        maps, stats = variant(use_mlp, use_position)
        rows[name] = metrics(*scored(maps), labels, mask) | stats
    coarse = maps  # "both", in the model's frame (the refiner's input)
    if model.refiner is not None:
        final_maps, final_image = scored(refined(coarse))  # each warped back once (AlignedPNI)
        coarse_image = scored(coarse)[1]
        rows["both+refine"] = metrics(final_maps, final_image, labels, mask)
        rows["both+refine/coarse-image"] = metrics(final_maps, coarse_image, labels, mask)
        added = final_image - coarse_image
        rows["both+refine"]["max_added_normal"] = float(added[~labels].mean())
        rows["both+refine"]["max_added_anomalous"] = float(added[labels].mean())
        # The final map is (1 - ratio) x coarse + ratio x scale x refined: scaling every map by (1 - ratio)
        # cannot change a ranking, so what moves the image AUROC is the refined term at the maximum.
        term = final_image - (1 - model.refiner.ratio) * coarse_image
        rows["both+refine"]["refined_term_normal"] = float(term[~labels].mean())
        rows["both+refine"]["refined_term_anomalous"] = float(term[labels].mean())
        with torch.no_grad():  # the refiner's own [0, 1] map, as if it were the detector
            alone = torch.cat([
                model.refiner.refine(i, c) for i, c in zip(images.split(8), coarse.split(8), strict=True)
            ])
        rows["refined-alone"] = metrics(*scored(alone), labels, mask)
        rows["synthetic"] = synthetic_check(model, samples, size, steps)
    for multiple in args.taus:
        maps, stats = variant(use_mlp=True, use_position=True, tau=multiple * paper_tau)
        if model.refiner is not None:
            maps = refined(maps)
        rows[f"tau={multiple:g}"] = metrics(*scored(maps), labels, mask) | stats
    report = {
        "ckpt": args.ckpt,
        "category": args.category,
        "images": len(test),
        "paper_tau": paper_tau,
        "refiner_scale": float(model.refiner.scale) if model.refiner is not None else None,
        "variants": rows,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
