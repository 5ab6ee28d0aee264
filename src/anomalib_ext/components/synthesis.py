"""Synthetic anomalies on (C, H, W) float images in [0, 1]; every function returns (image, mask).

- Perlin-shaped texture anomalies (DRAEM): anomalib's ``PerlinAnomalyGenerator``, reused as is.
- CutPaste and CutPaste-Scar (Li et al., 2021): a patch / a thin rotated strip cut from the image,
  colour-jittered and pasted elsewhere.
- Free-form masks: random brush strokes (as used for inpainting), and PNI's refinement labels
  (``stroke_defect_mask``: several stroke patterns, resized and combined) and data (``synthesise_defects``:
  another image's content pasted inside them).
- ``paste_region``: a masked region of one image pasted into a target area of another (PRN's
  extended anomalies).
- ``foreign_content``: images unlike the training set to fill synthetic defects with: colour Perlin-noise
  textures (no files needed) or images from a folder the user has (e.g. DTD, other categories).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator, generate_perlin_noise
from torchvision.transforms.v2 import ColorJitter
from torchvision.transforms.v2 import functional as TF  # ruff: ignore[lowercase-imported-as-non-lowercase]


def perlin_anomaly_generator(
    texture_dir: str | Path | None = None,
    blend: tuple[float, float] = (0.2, 1.0),
) -> PerlinAnomalyGenerator:
    """DRAEM-style generator: Perlin-noise regions filled with a (augmented) texture from ``texture_dir``."""
    if texture_dir is not None and not Path(texture_dir).is_dir():
        msg = f"Texture folder {texture_dir} does not exist; pass a folder of images (e.g. DTD) or None."
        raise FileNotFoundError(msg)
    return PerlinAnomalyGenerator(anomaly_source_path=texture_dir, probability=1.0, blend_factor=blend)


def _jitter(patch: torch.Tensor) -> torch.Tensor:
    return ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1)(patch)


def cutpaste(
    image: torch.Tensor,
    rng: np.random.Generator,
    *,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste: copy a rectangle (area 2-15% of the image), jitter its colour, paste it elsewhere."""
    _, h, w = image.shape
    area = rng.uniform(*area_ratio) * h * w
    aspect = math.exp(rng.uniform(math.log(aspect_ratio[0]), math.log(aspect_ratio[1])))
    ph = int(min(h - 1, max(2, round(math.sqrt(area / aspect)))))
    pw = int(min(w - 1, max(2, round(math.sqrt(area * aspect)))))
    sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    out = image.clone()
    out[:, ty : ty + ph, tx : tx + pw] = _jitter(image[:, sy : sy + ph, sx : sx + pw])
    mask = torch.zeros(1, h, w)
    mask[:, ty : ty + ph, tx : tx + pw] = 1
    return out, mask


def cutpaste_scar(
    image: torch.Tensor,
    rng: np.random.Generator,
    *,
    width: tuple[int, int] = (2, 16),
    length: tuple[int, int] = (10, 25),
    angle: tuple[float, float] = (-45, 45),
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste-Scar: a thin strip (2-16 x 10-25 px at 256 px, scaled with the image), rotated, pasted."""
    _, h, w = image.shape
    scale = min(h, w) / 256
    sw, sl = int(max(1, rng.integers(*width) * scale)), int(max(2, rng.integers(*length) * scale))
    sy, sx = rng.integers(0, h - sl + 1), rng.integers(0, w - sw + 1)
    strip = _jitter(image[:, sy : sy + sl, sx : sx + sw])
    diagonal = math.ceil(math.hypot(sl, sw)) + 2
    canvas = torch.zeros(image.shape[0] + 1, diagonal, diagonal)
    oy, ox = (diagonal - sl) // 2, (diagonal - sw) // 2
    canvas[:-1, oy : oy + sl, ox : ox + sw] = strip
    canvas[-1, oy : oy + sl, ox : ox + sw] = 1
    canvas = TF.rotate(canvas, float(rng.uniform(*angle)), interpolation=TF.InterpolationMode.NEAREST)
    ty, tx = rng.integers(0, h - diagonal + 1), rng.integers(0, w - diagonal + 1)
    region = canvas[-1:] > 0.5
    out, mask = image.clone(), torch.zeros(1, h, w)
    window = out[:, ty : ty + diagonal, tx : tx + diagonal]
    window[:] = torch.where(region, canvas[:-1], window)
    mask[:, ty : ty + diagonal, tx : tx + diagonal] = region.float()
    return out, mask


def free_form_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    strokes: tuple[int, int] = (1, 4),
    vertices: tuple[int, int] = (4, 12),
    brush: tuple[float, float] = (0.02, 0.06),
) -> torch.Tensor:
    """(1, H, W) float mask of random brush strokes (polylines of random angle, length and width)."""
    mask = np.zeros((height, width), np.uint8)
    size = min(height, width)
    for _ in range(int(rng.integers(*strokes))):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        thickness = max(1, int(rng.uniform(*brush) * size))
        for _ in range(int(rng.integers(*vertices))):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.15) * size
            ny = float(np.clip(y + length * np.sin(angle), 0, height - 1))
            nx = float(np.clip(x + length * np.cos(angle), 0, width - 1))
            cv2.line(mask, (int(x), int(y)), (int(nx), int(ny)), 255, thickness)
            cv2.circle(mask, (int(nx), int(ny)), thickness // 2, 255, -1)
            y, x = ny, nx
    return torch.from_numpy(mask > 0).float()[None]


def stroke_defect_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    patterns: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.1, 0.5),
) -> torch.Tensor:
    """(1, H, W) binary defect label: a few hand-drawn-like stroke patterns, each resized and placed at random.

    PNI's refinement data (paper Fig. 3): binary stroke patterns drawn at a fixed size, then randomly
    resized and combined. Each pattern is :func:`free_form_mask` on a square canvas whose side is
    ``scale`` x the image's shorter side, stretched by up to 1.5x along one axis, and put at a random place;
    the union of 1-3 (``patterns`` is a half-open range) patterns is the label. Never empty.
    """
    mask = torch.zeros(1, height, width)
    side = min(height, width)
    for _ in range(int(rng.integers(*patterns))):
        canvas = max(8, int(rng.uniform(*scale) * side))
        pattern = free_form_mask(64, 64, rng, strokes=(1, 3), brush=(0.06, 0.16))
        stretch = rng.uniform(1.0, 1.5)
        ph, pw = (int(canvas * stretch), canvas) if rng.random() < 0.5 else (canvas, int(canvas * stretch))
        ph, pw = min(ph, height), min(pw, width)
        pattern = torch.nn.functional.interpolate(pattern[None], size=(ph, pw), mode="nearest")[0]
        y, x = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        mask[:, y : y + ph, x : x + pw] = torch.maximum(mask[:, y : y + ph, x : x + pw], pattern)
    if not bool(mask.any()):  # a pattern can be all background only if every stroke fell off its canvas
        mask[:, height // 2 - 2 : height // 2 + 2, width // 2 - 2 : width // 2 + 2] = 1
    return mask


def paste_region(
    source: torch.Tensor,
    source_mask: torch.Tensor,
    target: torch.Tensor,
    rng: np.random.Generator,
    *,
    target_area: torch.Tensor | None = None,
    opacity: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the masked region of ``source`` into ``target`` at a random place inside ``target_area``.

    The region's bounding box is moved so that its centre lands on a random pixel of ``target_area``
    (anywhere when ``None``), clipped to the image. ``opacity`` < 1 blends it with the target.
    """
    region = source_mask.reshape(source_mask.shape[-2:]) > 0.5
    if not bool(region.any()):
        msg = "paste_region: the source mask is empty."
        raise ValueError(msg)
    ys, xs = torch.nonzero(region, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    ph, pw = y1 - y0, x1 - x0
    _, h, w = target.shape
    if target_area is not None and bool((target_area > 0.5).any()):
        cy, cx = torch.nonzero(target_area.reshape(h, w) > 0.5, as_tuple=True)
        pick = int(rng.integers(len(cy)))
        ty, tx = int(cy[pick]) - ph // 2, int(cx[pick]) - pw // 2
    else:
        ty, tx = int(rng.integers(0, max(1, h - ph + 1))), int(rng.integers(0, max(1, w - pw + 1)))
    ty, tx = int(np.clip(ty, 0, max(0, h - ph))), int(np.clip(tx, 0, max(0, w - pw)))
    ph, pw = min(ph, h - ty), min(pw, w - tx)
    patch = source[:, y0 : y0 + ph, x0 : x0 + pw]
    patch_mask = region[y0 : y0 + ph, x0 : x0 + pw].float()[None] * opacity
    out, mask = target.clone(), torch.zeros(1, h, w)
    window = out[:, ty : ty + ph, tx : tx + pw]
    window[:] = window * (1 - patch_mask) + patch * patch_mask
    mask[:, ty : ty + ph, tx : tx + pw] = (patch_mask > 0).float()
    return out, mask


def foreign_content(source: str | Path, count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(count, 3, H, W) uint8 images unlike any one training set, to fill synthetic defects with.

    Args:
        source: ``noise`` for colour textures made here (each channel an independent Perlin-noise field,
            anomalib's ``generate_perlin_noise``, stretched to [0, 255]; no files), or a folder of images
            searched recursively (``count`` of them drawn at random, or all if fewer, resized to ``size``).
        count: how many images (a folder may give fewer).
        size: (H, W).
        seed: seeds the noise and the draw from the folder.
    """
    from anomalib_ext.data.mvtec_like import IMAGE_EXTENSIONS, read_rgb

    height, width = size
    if str(source) == "noise":
        with torch.random.fork_rng(devices=[]):  # Perlin noise draws from torch's global RNG
            torch.manual_seed(seed)
            fields = torch.stack([generate_perlin_noise(height, width) for _ in range(3 * count)])
        low, high = fields.amin((1, 2), keepdim=True), fields.amax((1, 2), keepdim=True)
        fields = (fields - low) / (high - low).clamp_min(1e-6)
        return (fields.reshape(count, 3, height, width) * 255).round().to(torch.uint8)
    folder = Path(source)
    if not folder.is_dir():
        msg = f"Defect source {folder} is not a folder: pass 'noise' or a folder of images (e.g. DTD)."
        raise FileNotFoundError(msg)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        msg = f"Defect source {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}): add some or pass 'noise'."
        raise FileNotFoundError(msg)
    chosen = np.random.default_rng(seed).permutation(len(files))[:count]
    images = [torch.from_numpy(read_rgb(files[i])).permute(2, 0, 1) for i in sorted(chosen)]
    return torch.stack([TF.resize(image, [height, width], antialias=True) for image in images])


def _augment_like_pni(image: torch.Tensor, rng: np.random.Generator, max_angle: float) -> torch.Tensor:
    """PNI's online augmentation (paper Sec. 4.1) of a (3, H, W) image: horizontal flip, rotation, colour change.

    The rotation zooms in just enough (|cos| + |sin|) that no empty corner enters the picture: an empty
    corner is itself an anomaly to PNI and would teach its refiner to ignore high scores.
    """
    if rng.random() < 0.5:
        image = TF.horizontal_flip(image)
    angle = float(rng.uniform(-max_angle, max_angle))
    if angle:
        zoom = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
        image = TF.affine(image, angle=angle, translate=[0, 0], scale=zoom, shear=[0.0, 0.0])
    image = TF.adjust_brightness(image, float(rng.uniform(0.9, 1.1)))
    image = TF.adjust_contrast(image, float(rng.uniform(0.9, 1.1)))
    return TF.adjust_saturation(image, float(rng.uniform(0.9, 1.1))).clamp(0, 1)


def synthesise_defects(
    images: torch.Tensor,
    indices: torch.Tensor,
    rng: np.random.Generator,
    *,
    max_angle: float = 10.0,
    normal_share: float = 0.0,
    sources: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PNI's refinement data (Eq. 13): uint8 images -> I = (1 - A) I_clean + A I_defect and labels A for ``indices``.

    ``images`` are (N, 3, H, W) uint8 training images.

    I_clean is the augmented image at each index; I_defect another training image, augmented on its own
    and shifted by a random offset (so that on registered images the pasted content differs from what
    belongs there), or, if ``sources`` (M, 3, H, W) uint8 are given, one of them (content foreign to the
    set); A is :func:`stroke_defect_mask`. A ``normal_share`` of the images (drawn per image)
    stay defect-free, A = 0 (not in the paper, whose every training image has a defect); with 0 no extra
    random number is drawn, so the paper's stream of defects is unchanged.
    """
    _, _, h, w = images.shape
    clean, labels, defects = [], [], []
    for index in indices.tolist():
        if normal_share > 0 and rng.random() < normal_share:
            clean.append(_augment_like_pni(images[index].float() / 255, rng, max_angle))
            defects.append(clean[-1])
            labels.append(torch.zeros(1, h, w))
            continue
        if sources is None:
            other = int(rng.integers(len(images) - 1))
            other += other >= index  # any image but this one (the caller guarantees two or more)
            source = _augment_like_pni(images[other].float() / 255, rng, max_angle)
        else:
            source = _augment_like_pni(sources[int(rng.integers(len(sources)))].float() / 255, rng, max_angle)
        defects.append(torch.roll(source, (int(rng.integers(h)), int(rng.integers(w))), dims=(1, 2)))
        clean.append(_augment_like_pni(images[index].float() / 255, rng, max_angle))
        labels.append(stroke_defect_mask(h, w, rng))
    label = torch.stack(labels)
    return (1 - label) * torch.stack(clean) + label * torch.stack(defects), label
