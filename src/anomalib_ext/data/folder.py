"""A datamodule for any MVTec-like folder, with the subset and seen-anomaly options our methods need."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomalib.data import AnomalibDataModule, AnomalibDataset
from anomalib.data.dataclasses import ImageItem
from anomalib.data.utils import TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Image, Mask

from anomalib_ext.data.mvtec_like import (
    DatasetLayoutError,
    defect_area_fraction,
    make_mvtec_like_samples,
    read_binary_mask,
    read_rgb,
    validate_samples,
)

DEFAULT_SMALL_DEFECT_AREA = 0.01  # "small-scale" defect: its mask covers < 1% of the image


class MVTecLikeDataset(AnomalibDataset):
    """Images and masks of a samples table; reads JPEG masks by threshold and checks mask/image sizes."""

    def __init__(self, samples: pd.DataFrame, task: str, augmentations: Transform | None = None) -> None:
        super().__init__(augmentations=augmentations)
        samples = samples.reset_index(drop=True)
        samples.attrs["task"] = task
        self.samples = samples

    def __getitem__(self, index: int) -> ImageItem:
        """The image (and its mask, empty for normal images) of one sample, with label and paths."""
        row = self.samples.iloc[index]
        pixels = read_rgb(row.image_path)
        image = Image(torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255))
        gt_mask = None
        if self.task == "segmentation":
            if row.label_index == 0 or not row.mask_path:
                gt_mask = Mask(torch.zeros(pixels.shape[:2], dtype=torch.uint8))
            else:
                mask = read_binary_mask(row.mask_path, row.image_path, pixels.shape)
                gt_mask = Mask(torch.from_numpy(mask.astype(np.uint8)))
        if self.augmentations:
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(int(row.label_index)),
            image_path=row.image_path,
            mask_path=row.mask_path or None,
        )


def move_seen_anomalies(samples: pd.DataFrame, count: int, seed: int = 0) -> pd.DataFrame:
    """Move ``count`` labelled defect images (with masks) from test to train, stratified by defect type.

    Types take turns (sorted by name) so every type is represented; images within a type are drawn
    with ``seed``. The moved rows keep ``label_index=1`` and their mask, and leave the test set.
    """
    if count <= 0:
        return samples
    samples = samples.copy()
    defects = samples[(samples.split == "test") & (samples.label_index == 1)]
    if count > len(defects):
        msg = f"seen_anomalies={count} but the test set holds only {len(defects)} defect images."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    queues = {
        name: list(rng.permutation(group.index.to_numpy()))
        for name, group in sorted(defects.groupby(["category", "label"]), key=lambda kv: kv[0])
    }
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    samples.loc[chosen, "split"] = "train"
    return samples


def select_test_subset(
    samples: pd.DataFrame,
    defect_types: Sequence[str] | None = None,
    max_defect_area: float | None = None,
) -> pd.DataFrame:
    """Keep all good test images and only the defects of the named types / below an area fraction."""
    test = samples.split == "test"
    keep = ~test | (samples.label_index == 0)
    defects = test & (samples.label_index == 1)
    selected = defects
    if defect_types is not None:
        selected &= samples.label.isin(list(defect_types))
    if max_defect_area is not None:
        areas = samples.loc[selected, "mask_path"].map(defect_area_fraction)
        selected.loc[areas.index] &= areas < max_defect_area
    return samples[keep | selected]


class MVTecLikeFolder(AnomalibDataModule):
    """Datamodule for MVTec-like folders (png or jpg; masks ``<stem>`` or ``<stem>_mask``).

    Args:
        root: folder holding one sub-folder per category.
        category: one category, a list (trained as one model), or ``None`` for every sub-folder.
        defect_types: evaluate only these defect types (all good test images stay), e.g. ``[letter]``.
        max_defect_area: evaluate only defects whose mask covers less than this fraction of the image
            (the small-scale subset; :data:`DEFAULT_SMALL_DEFECT_AREA` = 0.01 is our documented choice).
        seen_anomalies: move this many labelled defect images (stratified by type, seeded) from test to
            train for supervised methods such as PRN; they are removed from the test set.
        seen_anomalies_seed: seed of that draw.
        Other arguments: as anomalib's ``MVTecAD``.
    """

    def __init__(
        self,
        root: str | Path,
        category: str | list[str] | None = None,
        defect_types: list[str] | None = None,
        max_defect_area: float | None = None,
        seen_anomalies: int = 0,
        seen_anomalies_seed: int = 0,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = Path(root)
        self.categories = [category] if isinstance(category, str) else (list(category) if category else None)
        self.category = "_".join(self.categories) if self.categories else "all"
        self.defect_types = defect_types
        self.max_defect_area = max_defect_area
        self.seen_anomalies = seen_anomalies
        self.seen_anomalies_seed = seen_anomalies_seed

    def resolved_categories(self) -> list[str]:
        """The categories to load: the ones asked for, or every sub-folder of ``root``."""
        if self.categories:
            return self.categories
        if not self.root.is_dir():
            msg = f"Dataset root {self.root} does not exist; check `root`."
            raise DatasetLayoutError(msg)
        return sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())

    def make_samples(self) -> pd.DataFrame:
        """Every sample of the selected categories, with seen anomalies moved and test subsets applied."""
        tables = [make_mvtec_like_samples(self.root / name, name) for name in self.resolved_categories()]
        if not tables:
            msg = f"No category folders with train/ found under {self.root}."
            raise DatasetLayoutError(msg)
        task = "segmentation" if all(t.attrs["task"] == "segmentation" for t in tables) else "classification"
        samples = pd.concat(tables, ignore_index=True)
        samples = move_seen_anomalies(samples, self.seen_anomalies, self.seen_anomalies_seed)
        samples = select_test_subset(samples, self.defect_types, self.max_defect_area)
        samples.attrs["task"] = task
        return samples

    def _setup(self, _stage: str | None = None) -> None:
        samples = self.make_samples()
        # Every header and mask size now, so a bad file stops the run before the fit, not after it.
        validate_samples(samples)
        task = samples.attrs["task"]
        self.train_data = MVTecLikeDataset(samples[samples.split == "train"], task)
        self.test_data = MVTecLikeDataset(samples[samples.split == "test"], task)
