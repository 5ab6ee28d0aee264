"""SyntheticGPD: printed garments generated offline in exactly the GPD folder layout.

``<root>/p001/train/good/000.jpg``, ``test/<good|defect>/000.jpg`` and
``ground_truth/<defect>/000.png`` (same stem as the image, like GPD). Generation is seeded and
deterministic; a dataset is written into a temporary folder and renamed into place when complete,
so an interrupted run never leaves half a dataset behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from anomalib_ext.data.folder import MVTecLikeFolder
from anomalib_ext.data.garment_print import DEFECT_TYPES, make_design, make_word_grid_design, photograph, render_design

COMPLETE_MARKER = "synthetic_gpd.json"


def category_names(num_categories: int) -> list[str]:
    """``p001``, ``p002``, ... as in the public GPD set."""
    return [f"p{i:03d}" for i in range(1, num_categories + 1)]


def _write_sample(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray | None, gt_folder: Path | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / f"{stem}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if mask is not None and gt_folder is not None:
        gt_folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(gt_folder / f"{stem}.png"), mask.astype(np.uint8) * 255)


def generate_category(
    out: Path,
    index: int,
    *,
    seed: int,
    image_size: int,
    train_count: int,
    test_good_count: int,
    defects_per_type: int,
    defect_types: Sequence[str] = DEFECT_TYPES,
    progress: tqdm | None = None,
    word_grid: bool = False,
) -> None:
    """Write one category (one garment print) with its train, test and ground-truth folders.

    ``word_grid``: a word-grid print (:mod:`anomalib_ext.data.word_grid`) instead of a classic one.
    """
    make = make_word_grid_design if word_grid else make_design
    design = make(np.random.default_rng([seed, index]), image_size)
    jobs = [("train", "good", i) for i in range(train_count)] + [("test", "good", i) for i in range(test_good_count)]
    jobs += [("test", defect, i) for defect in defect_types for i in range(defects_per_type)]
    for split, label, i in jobs:
        # Every image has its own seed, so the data do not depend on the order or number of jobs.
        code = 0 if label == "good" else 1 + DEFECT_TYPES.index(label)
        rng = np.random.default_rng([seed, index, 0 if split == "train" else 1, code, i])
        for _attempt in range(20):  # a defect can land off-frame after the pose change: draw again
            image, mask = render_design(design, rng, None if label == "good" else label)
            image, mask = photograph(image, mask, design, rng)
            if label == "good" or mask.sum() >= 4:
                break
        gt = out / "ground_truth" / label if label != "good" else None
        _write_sample(out / split / label, f"{i:03d}", image, mask if gt else None, gt)
        if progress is not None:
            progress.update()


def generate_dataset(
    root: str | Path,
    *,
    num_categories: int = 4,
    image_size: int = 512,
    train_count: int = 40,
    test_good_count: int = 16,
    defects_per_type: int = 6,
    defect_types: Sequence[str] = DEFECT_TYPES,
    seed: int = 0,
    overwrite: bool = False,
    word_grid_categories: int = 0,
) -> Path:
    """Generate SyntheticGPD into ``root`` (atomically) and return it; a complete one is reused.

    ``num_categories`` classic prints (``p001`` ...) are followed by ``word_grid_categories`` word-grid
    prints (the next names), whose letter defects are semantic (:mod:`anomalib_ext.data.word_grid`).
    """
    root = Path(root)
    settings = {
        "num_categories": num_categories,
        "image_size": image_size,
        "train_count": train_count,
        "test_good_count": test_good_count,
        "defects_per_type": defects_per_type,
        "defect_types": list(defect_types),
        "seed": seed,
    }
    if word_grid_categories:  # absent when 0: sets written before word grids existed stay valid
        settings["word_grid_categories"] = word_grid_categories
    unknown = set(defect_types) - set(DEFECT_TYPES)
    if unknown:
        msg = f"Unknown defect types {sorted(unknown)}; choose from {DEFECT_TYPES}"
        raise ValueError(msg)
    marker = root / COMPLETE_MARKER
    if marker.is_file() and not overwrite:
        if json.loads(marker.read_text()) == settings:
            return root
        existing = json.loads(marker.read_text())
        changed = {k: (existing.get(k), v) for k, v in settings.items() if existing.get(k) != v}
        msg = (
            f"{root} holds a SyntheticGPD made with other settings {changed} (found, asked); pass overwrite=True "
            "or another root."
        )
        raise FileExistsError(msg)
    if root.exists() and any(root.iterdir()) and not marker.is_file() and not overwrite:
        msg = f"{root} exists and is not a SyntheticGPD folder; choose an empty or new folder."
        raise FileExistsError(msg)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    total = (num_categories + word_grid_categories) * (
        train_count + test_good_count + defects_per_type * len(defect_types)
    )
    with tqdm(total=total, desc=f"Generating SyntheticGPD in {root}", unit="img") as progress:
        for index, name in enumerate(category_names(num_categories + word_grid_categories)):
            generate_category(
                partial / name,
                index,
                seed=seed,
                image_size=image_size,
                train_count=train_count,
                test_good_count=test_good_count,
                defects_per_type=defects_per_type,
                defect_types=defect_types,
                progress=progress,
                word_grid=index >= num_categories,
            )
    (partial / COMPLETE_MARKER).write_text(json.dumps(settings, indent=1))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(root)
    return root


def default_root(**settings) -> Path:
    """Cache folder for a set of generator settings (one folder per distinct setting)."""
    from anomalib_ext.paths import cache_dir

    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode(), usedforsecurity=False).hexdigest()[:10]
    return cache_dir() / "synthetic_gpd" / digest


class SyntheticGPD(MVTecLikeFolder):
    """Printed-garment data in the GPD layout, generated on first use (the offline default data).

    Args:
        root: where the data live; ``None`` = a folder in the user cache keyed by the settings.
        category: ``p001`` … (one, a list, or ``None`` for all).
        num_categories, generated_size, train_count, test_good_count, defects_per_type, generator_seed:
            generator settings (GPD has ~40 training images per category; defaults mirror that).
        word_grid_categories: word-grid prints after the classic ones (``p005``, ``p006`` ... with the
            defaults), whose letter defects are locally normal (:mod:`anomalib_ext.data.word_grid`).
            ``generated_size`` is the side of the written images (anomalib reserves ``image_size``
            in configs for the model input size and turns it into a tuple).
        Other arguments: see :class:`MVTecLikeFolder` (defect_types / max_defect_area subsets,
        seen_anomalies, batch sizes, split modes).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        category: str | list[str] | None = "p001",
        num_categories: int = 4,
        generated_size: int = 512,
        train_count: int = 40,
        test_good_count: int = 16,
        defects_per_type: int = 6,
        generator_seed: int = 0,
        word_grid_categories: int = 0,
        **kwargs,
    ) -> None:
        self.generator_settings = {
            "num_categories": num_categories,
            "image_size": generated_size,
            "train_count": train_count,
            "test_good_count": test_good_count,
            "defects_per_type": defects_per_type,
            "seed": generator_seed,
        }
        if word_grid_categories:  # absent when 0, so the default keeps its cache folder
            self.generator_settings["word_grid_categories"] = word_grid_categories
        super().__init__(root=root or default_root(**self.generator_settings), category=category, **kwargs)

    def prepare_data(self) -> None:
        """Generate the set (seeded, atomic) unless a complete one with the same settings is there."""
        generate_dataset(self.root, **self.generator_settings)

    def _setup(self, _stage: str | None = None) -> None:
        self.prepare_data()  # also when setup() is called without the trainer's prepare_data()
        super()._setup(_stage)


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-ext make-gpd --out DIR``: write SyntheticGPD to a folder."""
    parser = argparse.ArgumentParser(prog="anomalib-ext make-gpd", description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--num-categories", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--train-count", type=int, default=40)
    parser.add_argument("--test-good-count", type=int, default=16)
    parser.add_argument("--defects-per-type", type=int, default=6)
    parser.add_argument("--defect-types", nargs="+", default=list(DEFECT_TYPES), choices=DEFECT_TYPES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--word-grid-categories", type=int, default=0, help="word-grid prints after the classic ones")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    root = generate_dataset(
        args.out,
        num_categories=args.num_categories,
        image_size=args.image_size,
        train_count=args.train_count,
        test_good_count=args.test_good_count,
        defects_per_type=args.defects_per_type,
        defect_types=args.defect_types,
        seed=args.seed,
        overwrite=args.overwrite,
        word_grid_categories=args.word_grid_categories,
    )
    print(f"SyntheticGPD written to {root}")
    return 0
