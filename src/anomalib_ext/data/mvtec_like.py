"""Parse and read any MVTec-like folder: png/jpg/bmp/tif images, masks with the same stem or ``_mask``.

Layout::

    <root>/<category>/train/good/*.{png,jpg,...}
    <root>/<category>/test/<good|defect type>/*
    <root>/<category>/ground_truth/<defect type>/<stem>[_mask].{png,jpg,...}

anomalib's own ``MVTecAD`` reads only ``.png`` and pairs masks by sort order; GPD and ../shared/data
are JPEG and GPD masks may be JPEG (thresholded here), so we pair masks by stem instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from anomalib_ext.errors import AnomalibExtError

logger = logging.getLogger(__name__)

# Matched case-insensitively everywhere (``.PNG``, ``.JPG`` and ``_MASK`` included).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIX = "_mask"
# JPEG masks carry compression noise around 0 and 255: threshold in the middle.
MASK_THRESHOLD = 127
# 16-bit greyscale images (PIL modes "I;16*", "I") are scaled to 8 bits by this factor (65535 / 255).
SIXTEEN_BIT_SCALE = 257
# Models resize every image to a (mostly square) input: images much smaller, or of a far more
# elongated shape, lose or distort what the model sees. Warned about, not refused.
MIN_IMAGE_SIDE = 32
MAX_ASPECT_CHANGE = 4.0


class DatasetLayoutError(AnomalibExtError, FileNotFoundError):
    """A dataset folder does not have the expected layout."""


class MaskMismatchError(AnomalibExtError, ValueError):
    """A defect image and its ground-truth mask do not belong together."""


class DatasetValidationError(AnomalibExtError, ValueError):
    """Images or masks of a dataset that cannot be used (found before any training)."""


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _mask_stem(mask: Path) -> str:
    """The image stem a mask belongs to: ``000.png`` and ``000_mask.PNG`` both belong to ``000``."""
    stem = mask.stem
    return stem[: -len(MASK_SUFFIX)] if stem.lower().endswith(MASK_SUFFIX) else stem


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    """Mask files of one defect-type folder by the stem of their image (``<stem>`` before ``<stem>_mask``)."""
    if not folder.is_dir():
        return {}
    masks: dict[str, Path] = {}
    for mask in sorted(_images_in(folder), key=lambda p: (p.stem.lower().endswith(MASK_SUFFIX), p.name)):
        masks.setdefault(_mask_stem(mask), mask)
    return masks


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
        msg = f"{train_good} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
        raise DatasetLayoutError(msg)
    missing_masks, unmatched = [], []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        masks = _masks_by_stem(ground_truth / type_dir.name) if type_dir.name != "good" else {}
        images = _images_in(type_dir)
        for image in images:
            mask = None
            if type_dir.name != "good":
                mask = masks.get(image.stem)
                if mask is None:
                    missing_masks.append(image)
            rows.append(("test", type_dir.name, image, mask))
        stems = {image.stem for image in images}
        unmatched += [mask for stem, mask in masks.items() if stem not in stems]
    if unmatched:
        shown = ", ".join(str(p) for p in unmatched[:3])
        logger.warning(
            "%d mask(s) in %s belong to no test image (e.g. %s): check their names (<stem>.png or "
            "<stem>_mask.png beside test/<type>/<stem>.*) or remove them.",
            len(unmatched),
            ground_truth,
            shown,
        )
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


def _grey_16bit(image: Image.Image) -> np.ndarray | None:
    """A 16-bit greyscale image (PIL modes "I;16*", "I") scaled to uint8, else ``None``; float images are refused.

    PIL's own ``convert("RGB"/"L")`` clips such images to 255 (pure white) instead of scaling them.
    """
    if image.mode == "F":
        msg = "floating-point images are not supported; save it as 8- or 16-bit PNG or TIFF"
        raise ValueError(msg)
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return None
    values = np.asarray(image, dtype=np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        msg = f"pixel values {values.min():.0f}..{values.max():.0f} are outside the 16-bit range"
        raise ValueError(msg)
    return np.round(values / SIXTEEN_BIT_SCALE).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB with a clear error if unreadable.

    Grey, palette and RGBA images are converted; 16-bit images are scaled to 8 bits (grey ones by
    PIL would be clipped to white otherwise); floating-point images are refused.
    """
    try:
        with Image.open(path) as image:
            grey = _grey_16bit(image)
            if grey is not None:
                return np.repeat(grey[..., None], 3, axis=2)
            return np.array(image.convert("RGB"))  # a writable copy (torch.from_numpy warns on read-only)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        msg = f"Cannot read image {path}: {error}. Replace or delete the file (it may be truncated or not an image)."
        raise OSError(msg) from error


def resize_like_preprocessor(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 3, H, W) float images resized to ``size`` as anomalib's PreProcessor resizes them.

    torchvision ``Resize`` is bilinear and antialiased: images prepared outside a datamodule then score
    as the evaluated ones.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.nn.functional.interpolate(images, size=tuple(size), mode="bilinear", antialias=True)


def read_resized(path: str | Path, size: Sequence[int]) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float tensor in [0, 1] at ``size`` (see :func:`resize_like_preprocessor`)."""
    image = torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float()[None] / 255
    return resize_like_preprocessor(image, size)


def read_binary_mask(
    path: str | Path,
    image_path: str | Path | None = None,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Read a mask as HxW bool and check it matches the image size.

    ``> 127`` of the 8-bit grey value (so JPEG masks work; 16-bit masks are scaled first); a mask
    whose values are only 0 and 1 is taken as it is.
    """
    try:
        with Image.open(path) as mask_image:
            values = _grey_16bit(mask_image)
            values = np.asarray(mask_image.convert("L")) if values is None else values
    except (UnidentifiedImageError, OSError, ValueError) as error:
        msg = f"Cannot read mask {path}: {error}. Replace the mask file of {image_path}."
        raise OSError(msg) from error
    mask = values > 0 if values.max(initial=0) <= 1 else values > MASK_THRESHOLD
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise MaskMismatchError(_size_mismatch(path, mask.shape, image_path, shape))
    return mask


def _size_mismatch(
    mask_path: str | Path,
    mask_shape: Sequence[int],
    image_path: str | Path,
    image_shape: Sequence[int],
) -> str:
    return (
        f"Mask {mask_path} is {mask_shape[1]}x{mask_shape[0]} but its image {image_path} is "
        f"{image_shape[1]}x{image_shape[0]}: resize the mask to the image (nearest neighbour) or fix the pairing."
    )


def unusual_shape(name: str | Path, shape: Sequence[int], input_size: Sequence[int] | None = None) -> str | None:
    """A warning for an image much smaller than a model input, or far from the input's aspect ratio."""
    height, width = int(shape[0]), int(shape[1])
    reasons = []
    if min(height, width) < MIN_IMAGE_SIDE:
        reasons.append("so small that the model sees little detail once it is resized up")
    target = input_size[1] / input_size[0] if input_size else 1.0
    change = (width / max(height, 1)) / target
    if max(change, 1 / max(change, 1e-9)) > MAX_ASPECT_CHANGE:
        aspect = f"{input_size[1]}x{input_size[0]}" if input_size else "square"
        reasons.append(
            f"far from the model's input aspect ({aspect}), so it is stretched: crop it to the part to inspect",
        )
    return f"{name} is {width}x{height} pixels: " + "; ".join(reasons) + "." if reasons else None


def _header(path: str) -> tuple[tuple[int, int], str]:
    """(H, W) and PIL mode from the file header (no decoding); PNGs also have their chunk checksums verified."""
    with Image.open(path) as image:
        size, mode = (image.height, image.width), image.mode
        if image.format == "PNG":
            image.verify()  # cheap: checks every chunk's CRC, so a truncated PNG is caught here
    return size, mode


def validate_samples(samples: pd.DataFrame) -> None:
    """Check every image header and mask size of a samples table before any training.

    A corrupt or unreadable image, a float image, or a mask whose size differs from its image is
    collected, and all are reported together in one :class:`DatasetValidationError`. Tiny or very
    elongated images are warned about.
    """
    problems: list[str] = []
    for row in samples.itertuples():
        try:
            shape, mode = _header(row.image_path)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            problems.append(f"{row.image_path}: cannot be read as an image ({error}); replace or delete it")
            continue
        if mode == "F":
            problems.append(f"{row.image_path}: floating-point image; save it as 8- or 16-bit")
        warning = unusual_shape(row.image_path, shape)
        if warning:
            logger.warning(warning)
        if row.mask_path:
            try:
                mask_shape, _ = _header(row.mask_path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                problems.append(f"{row.mask_path}: the mask cannot be read ({error}); replace it")
                continue
            if mask_shape != shape:
                problems.append(_size_mismatch(row.mask_path, mask_shape, row.image_path, shape))
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        msg = f"{len(problems)} file(s) of the dataset cannot be used (checked before training):\n  {shown}{more}"
        raise DatasetValidationError(
            msg,
        )


def defect_area_fraction(mask_path: str) -> float:
    """Fraction of the image that a defect mask covers (0 when there is no mask)."""
    if not mask_path:
        return 0.0
    return float(read_binary_mask(mask_path).mean())
