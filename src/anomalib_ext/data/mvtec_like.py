"""Parse and read any MVTec-like folder: png/jpg/bmp/tif images, masks with the same stem or ``_mask``.

Layout::

    <root>/<category>/train/good/*.{png,jpg,...}
    <root>/<category>/test/<good|defect type>/*
    <root>/<category>/ground_truth/<defect type>/<stem>[_mask].{png,jpg,...}

anomalib's own ``MVTecAD`` reads only ``.png`` and pairs masks by sort order; GPD and ../shared/data
are JPEG and GPD masks may be JPEG (thresholded here), so we pair masks by stem instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = ("", "_mask")
# JPEG masks carry compression noise around 0 and 255: threshold in the middle.
MASK_THRESHOLD = 127


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout."""


class MaskMismatchError(ValueError):
    """A defect image and its ground-truth mask do not belong together."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _find_mask(ground_truth: Path, defect_type: str, stem: str) -> Path | None:
    folder = ground_truth / defect_type
    for suffix in MASK_SUFFIXES:
        for ext in IMAGE_EXTENSIONS:
            candidate = folder / f"{stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def make_mvtec_like_samples(category_root: str | Path, category: str | None = None) -> pd.DataFrame:
    """Samples table (anomalib's columns) of one MVTec-like category folder.

    Columns: ``path, category, split, label, image_path, mask_path, label_index``; ``attrs["task"]``
    is ``segmentation`` when the defect images have masks, ``classification`` when none has.

    Raises:
        DatasetLayoutError: the folder or its ``train/good`` / ``test`` sub-folders are missing or empty.
        MaskMismatchError: some, but not all, defect images have a mask.
    """
    root = Path(category_root)
    category = category or root.name
    train_good, test_dir, ground_truth = root / "train" / "good", root / "test", root / "ground_truth"
    for folder in (train_good, test_dir):
        if not folder.is_dir():
            msg = (
                f"{folder} does not exist. An MVTec-like category needs train/good/ (defect-free images) "
                f"and test/<good|defect type>/ under {root}; check `root` and `category`."
            )
            raise DatasetLayoutError(msg)
    rows = [("train", "good", p, None) for p in _images_in(train_good)]
    if not rows:
        raise DatasetLayoutError(f"{train_good} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    missing_masks = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for image in _images_in(type_dir):
            mask = None
            if type_dir.name != "good":
                mask = _find_mask(ground_truth, type_dir.name, image.stem)
                if mask is None:
                    missing_masks.append(image)
            rows.append(("test", type_dir.name, image, mask))
    n_defects = sum(1 for r in rows if r[1] != "good")
    if 0 < len(missing_masks) < n_defects:
        shown = ", ".join(str(p) for p in missing_masks[:3])
        msg = (
            f"{len(missing_masks)} of {n_defects} defect images in {test_dir} have no mask in {ground_truth} "
            f"(e.g. {shown}). Add ground_truth/<type>/<stem>.png or <stem>_mask.png for each, or remove "
            "all masks to evaluate image-level only."
        )
        raise MaskMismatchError(msg)
    samples = pd.DataFrame(
        {
            "path": str(root),
            "category": category,
            "split": [r[0] for r in rows],
            "label": [r[1] for r in rows],
            "image_path": [str(r[2]) for r in rows],
            "mask_path": [str(r[3]) if r[3] is not None else "" for r in rows],
            "label_index": [0 if r[1] == "good" else 1 for r in rows],
        },
    )
    samples.attrs["task"] = "segmentation" if n_defects and not missing_masks else "classification"
    return samples


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB (grey and RGBA are converted), with a clear error if unreadable."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # a writable copy (torch.from_numpy warns on read-only)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        msg = f"Cannot read image {path}: {error}. Replace or delete the file (it may be truncated or not an image)."
        raise OSError(msg) from error


def read_binary_mask(path: str | Path, image_path: str | Path | None = None, shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a mask as HxW bool (``> 127``, so JPEG masks work) and check it matches the image size."""
    try:
        with Image.open(path) as mask_image:
            mask = np.asarray(mask_image.convert("L")) > MASK_THRESHOLD
    except (UnidentifiedImageError, OSError, ValueError) as error:
        msg = f"Cannot read mask {path}: {error}. Replace the mask file of {image_path}."
        raise OSError(msg) from error
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        msg = (
            f"Mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{shape[1]}x{shape[0]}: resize the mask to the image (nearest neighbour) or fix the pairing."
        )
        raise MaskMismatchError(msg)
    return mask


def defect_area_fraction(mask_path: str) -> float:
    """Fraction of the image that a defect mask covers (0 when there is no mask)."""
    if not mask_path:
        return 0.0
    return float(read_binary_mask(mask_path).mean())
