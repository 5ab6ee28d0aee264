"""Render printed garments: woven fabric, a print, GPD's eight defect types, and a photograph of it.

The print holds a word, a number and a logo (classic designs) or a grid of words and a logo (word-grid
designs, :mod:`anomalib_ext.data.word_grid`: semantic letter defects); the "photograph" varies pose and
lighting.

Everything is drawn in a fixed *design frame* first; the defect mask is where the defective design
differs from the normal design, so masks are exact for every defect type. The photo step then warps
image and mask together with a random homography, which is why alignment matters downstream.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass

import cv2
import numpy as np

from anomalib_ext.data.word_grid import WordGrid, draw_word_grid, make_word_grid, semantic_grid_change

DEFECT_TYPES = ("color", "dim", "hole", "letter", "miss", "over", "scratch", "stain")
WORDS = ("SPORT", "URBAN", "WILD", "BRAVE", "OCEAN", "TIGER", "NORTH", "PLANET", "ROCKET", "MAGIC", "LEGEND", "STORM")
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)
MASK_DIFF = 0.06  # design-frame change (on [0, 1]) that counts as defective


@dataclass(frozen=True)
class PrintDesign:
    """What one category (one garment print) looks like; drawn from the category's seed."""

    size: int
    fabric_rgb: np.ndarray
    thread_period: float
    ink_rgb: np.ndarray
    accent_rgb: np.ndarray
    word: str
    number: str
    font: int
    logo: str
    photo_jitter: float  # strength of pose changes between photographs
    grid: WordGrid | None = None  # a word-grid print (no word, no number) when set


def make_design(rng: np.random.Generator, size: int) -> PrintDesign:
    """A random print design (fabric, inks with enough contrast, text and logo) for ``size`` px images."""
    fabric = rng.uniform(0.25, 0.85, 3)
    ink = np.clip(1.0 - fabric + rng.uniform(-0.2, 0.2, 3), 0.05, 0.95)
    accent = rng.uniform(0.1, 0.9, 3)
    # A print must stand out in brightness too (photographs and ORB work on luminance): push ink and
    # accent at least 0.3 away from the fabric's luminance.
    luma = np.array([0.299, 0.587, 0.114])
    for colour in (ink, accent):
        gap = float(luma @ colour - luma @ fabric)
        if abs(gap) < 0.3:
            colour += (np.sign(gap) or 1.0) * (0.3 - abs(gap))  # ruff: ignore[redefined-loop-name] - in place: edits ink/accent
            if (
                not 0.0 <= luma @ np.clip(colour, 0, 1) <= 1.0
                or abs(luma @ np.clip(colour, 0, 1) - luma @ fabric) < 0.3
            ):
                colour -= 2 * (np.sign(gap) or 1.0) * (0.3 - abs(gap)) + (np.sign(gap) or 1.0) * abs(gap) * 2  # ruff: ignore[redefined-loop-name]
        np.clip(colour, 0.02, 0.98, out=colour)
    return PrintDesign(
        size=size,
        fabric_rgb=fabric,
        thread_period=float(rng.uniform(3.0, 6.0)) * size / 512,
        ink_rgb=ink,
        accent_rgb=accent,
        word=str(rng.choice(WORDS)),
        number=str(rng.integers(10, 99)),
        font=int(rng.choice(FONTS)),
        logo=str(rng.choice(["circle", "star", "triangle", "diamond"])),
        photo_jitter=1.0,
    )


def make_word_grid_design(rng: np.random.Generator, size: int) -> PrintDesign:
    """A word-grid print: the colours, font and logo of :func:`make_design`, a grid of words for the text."""
    return dataclasses.replace(make_design(rng, size), grid=make_word_grid(rng))


def _letter_layout(design: PrintDesign, word: str) -> tuple[list[tuple[int, int]], float, int]:
    """Fixed letter cells of the design word, so a swapped/replaced letter lands in the same cell."""
    s = design.size
    scale = s / 512 * 2.2
    thickness = max(2, round(s / 512 * 7))
    (cell_w, _cell_h), _ = cv2.getTextSize("W", design.font, scale, thickness)
    left = (s - cell_w * len(word)) // 2
    return [(left + i * cell_w, int(s * 0.42)) for i in range(len(word))], scale, thickness


def _draw_word(canvas: np.ndarray, design: PrintDesign, word: str) -> None:
    cells, scale, thickness = _letter_layout(design, design.word)
    (cell_w, _), _ = cv2.getTextSize("W", design.font, scale, thickness)
    for (x, y), letter in zip(cells, word, strict=True):
        (w, _), _ = cv2.getTextSize(letter, design.font, scale, thickness)
        cv2.putText(canvas, letter, (x + (cell_w - w) // 2, y), design.font, scale, 255, thickness, cv2.LINE_AA)


def _draw_logo(canvas: np.ndarray, design: PrintDesign) -> None:
    s = design.size
    # Word grids fill the middle of the print: their logo sits below, smaller.
    cx, cy, r = (s // 2, int(s * 0.87), int(s * 0.06)) if design.grid else (s // 2, int(s * 0.64), int(s * 0.09))
    angles = np.linspace(
        0,
        2 * np.pi,
        {"triangle": 3, "diamond": 4, "star": 10, "circle": 64}[design.logo],
        endpoint=False,
    )
    radii = np.where(np.arange(len(angles)) % 2 == 1, r * 0.45, r) if design.logo == "star" else np.full(len(angles), r)
    points = np.stack([cx + radii * np.sin(angles), cy - radii * np.cos(angles)], 1).astype(np.int32)
    cv2.fillPoly(canvas, [points], 255, cv2.LINE_AA)


def render_print_layers(
    design: PrintDesign,
    word: str | None = None,
    cells: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage maps (HxW float in [0, 1]) of the main ink (word + number, or the word grid) and the accent ink (logo).

    ``word`` / ``cells``: the classic word or the grid's cells to draw instead of the design's (defects).
    """
    s = design.size
    # OpenCV draws text only on 8-bit images: draw at 255, return coverage in [0, 1].
    ink = np.zeros((s, s), np.uint8)
    accent = np.zeros((s, s), np.uint8)
    if design.grid is not None:
        draw_word_grid(ink, design.grid, design.font, cells)
        _draw_logo(accent, design)
        return ink.astype(np.float32) / 255, accent.astype(np.float32) / 255
    _draw_word(ink, design, word or design.word)
    scale = s / 512 * 1.3
    (w, _), _ = cv2.getTextSize(design.number, design.font, scale, 3)
    cv2.putText(
        ink,
        design.number,
        ((s - w) // 2, int(s * 0.84)),
        design.font,
        scale,
        255,
        max(2, round(s / 512 * 4)),
        cv2.LINE_AA,
    )
    _draw_logo(accent, design)
    return ink.astype(np.float32) / 255, accent.astype(np.float32) / 255


def render_fabric(design: PrintDesign, rng: np.random.Generator) -> np.ndarray:
    """Woven fabric: warp and weft threads, a little fibre noise; HxWx3 float."""
    s = design.size
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = 0.5 + 0.25 * np.sin(2 * np.pi * x / design.thread_period + phase[0]) * np.sin(
        2 * np.pi * y / design.thread_period + phase[1],
    )
    fibre = cv2.GaussianBlur(rng.normal(0, 1, (s, s)).astype(np.float32), (0, 0), 1.2)
    shade = 0.88 + 0.12 * weave + 0.03 * fibre
    return design.fabric_rgb[None, None, :].astype(np.float32) * shade[..., None]


def compose(
    fabric: np.ndarray,
    design: PrintDesign,
    ink: np.ndarray,
    accent: np.ndarray,
    *,
    ink_rgb: np.ndarray | None = None,
    accent_rgb: np.ndarray | None = None,
) -> np.ndarray:
    """Lay the inks over the fabric; the weave shows faintly through the print."""
    ink_rgb = design.ink_rgb if ink_rgb is None else ink_rgb
    accent_rgb = design.accent_rgb if accent_rgb is None else accent_rgb
    texture = fabric.mean(2, keepdims=True) / max(float(design.fabric_rgb.mean()), 1e-3)
    image = fabric * (1 - ink[..., None]) + (ink_rgb * (0.9 + 0.1 * texture)) * ink[..., None]
    return image * (1 - accent[..., None]) + (accent_rgb * (0.9 + 0.1 * texture)) * accent[..., None]


def _blob(rng: np.random.Generator, size: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """A smooth random blob (0/1 float) around a centre."""
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = radius * (1 + 0.35 * cv2.GaussianBlur(rng.normal(0, 1, (24, 1)), (1, 5), 1.5)[:, 0])
    points = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], 1).astype(np.int32)
    blob = np.zeros((size, size), np.uint8)
    cv2.fillPoly(blob, [points], 255, cv2.LINE_AA)
    return blob.astype(np.float32) / 255


def _print_point(rng: np.random.Generator, coverage: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(coverage > 0.5)
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])


def semantic_letter_change(design: PrintDesign, rng: np.random.Generator) -> str:
    """Swap two different letters, or replace a letter by another letter that occurs in the print."""
    word = list(design.word)
    pairs = [(i, j) for i in range(len(word)) for j in range(i + 1, len(word)) if word[i] != word[j]]
    if rng.random() < 0.5 and pairs:
        i, j = pairs[rng.integers(len(pairs))]
        word[i], word[j] = word[j], word[i]
    else:
        i = int(rng.integers(len(word)))
        others = sorted(set(design.word) - {word[i]}) or sorted(set(string.ascii_uppercase) - {word[i]})
        word[i] = str(rng.choice(others))
    return "".join(word)


def render_design(design: PrintDesign, rng: np.random.Generator, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The garment in the design frame, with one defect (or none), and the defect mask (HxW bool)."""
    s = design.size
    fabric = render_fabric(design, rng)
    ink, accent = render_print_layers(design)
    normal = compose(fabric, design, ink, accent)
    if defect is None:
        return normal, np.zeros((s, s), bool)
    radius = s * rng.uniform(0.04, 0.09)
    if defect == "letter" and design.grid is not None:
        d_ink, _ = render_print_layers(design, cells=semantic_grid_change(design.grid, rng))
        image = compose(fabric, design, d_ink, accent)
    elif defect == "letter":
        d_ink, _ = render_print_layers(design, semantic_letter_change(design, rng))
        image = compose(fabric, design, d_ink, accent)
    elif defect in {"color", "dim", "miss"}:
        region = _blob(rng, s, _print_point(rng, ink + accent), radius)
        if defect == "color":
            shifted = np.clip(design.ink_rgb[::-1] * rng.uniform(0.5, 1.5), 0, 1)
            recoloured = compose(fabric, design, ink, accent, ink_rgb=shifted, accent_rgb=shifted[::-1])
            image = normal * (1 - region[..., None]) + recoloured * region[..., None]
        elif defect == "dim":
            smear = cv2.GaussianBlur(ink, (0, 0), max(2.0, s / 60)) * 1.6
            image = compose(
                fabric,
                design,
                np.clip(ink * (1 - region) + np.minimum(smear, 0.85) * region, 0, 1),
                accent,
            )
        else:
            image = compose(fabric, design, ink * (1 - region), accent * (1 - region))
    elif defect == "over":
        shift = (rng.uniform(-1, 1, 2) * s * 0.12).astype(np.float32)
        region = _blob(rng, s, _print_point(rng, ink), radius * 1.3)
        moved = cv2.warpAffine(ink * region, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (s, s))
        image = compose(fabric, design, np.maximum(ink, moved), accent)
    elif defect == "hole":
        hole = _blob(rng, s, tuple(rng.uniform(0.15, 0.85, 2) * s), radius * 0.6)
        rim = cv2.GaussianBlur(hole, (0, 0), 2.0)
        image = normal * (1 - rim[..., None]) + 0.05 * rim[..., None]
    elif defect == "scratch":
        p0 = rng.uniform(0.1, 0.9, 2) * s
        p1 = p0 + rng.uniform(-1, 1, 2) * s * 0.3
        line = np.zeros((s, s), np.uint8)
        cv2.line(line, tuple(p0.astype(int)), tuple(p1.astype(int)), 255, max(2, s // 170), cv2.LINE_AA)
        line = line.astype(np.float32) / 255
        tone = 0.95 if normal.mean() < 0.5 else 0.1
        image = normal * (1 - line[..., None]) + tone * line[..., None]
    elif defect == "stain":
        stains = np.zeros((s, s), np.float32)
        center = rng.uniform(0.15, 0.85, 2) * s
        for _ in range(int(rng.integers(1, 4))):
            offset = center + rng.normal(0, radius * 0.6, 2)
            stains = np.maximum(stains, _blob(rng, s, tuple(offset), radius * rng.uniform(0.15, 0.35)))
        image = normal * (1 - 0.7 * stains[..., None]) + 0.7 * stains[..., None] * rng.uniform(0.1, 0.4, 3)
    else:
        msg = f"Unknown defect type '{defect}'; choose from {DEFECT_TYPES}"
        raise ValueError(msg)
    mask = np.abs(image - normal).max(2) > MASK_DIFF
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) > 0
    return image, mask


def random_pose(design: PrintDesign, rng: np.random.Generator) -> np.ndarray:
    """The homography (design frame -> photo) of a random pose: rotation, scale, shift, slight perspective."""
    s = design.size
    j = design.photo_jitter
    angle = np.deg2rad(rng.uniform(-8, 8) * j)
    scale = 1 + rng.uniform(-0.08, 0.08) * j
    shift = rng.uniform(-0.05, 0.05, 2) * s * j
    c, si = np.cos(angle) * scale, np.sin(angle) * scale
    centre = np.array([s / 2, s / 2])
    similarity = np.array([[c, -si, 0], [si, c, 0], [0, 0, 1.0]])
    similarity[:2, 2] = centre + shift - similarity[:2, :2] @ centre
    perspective = np.eye(3)
    perspective[2, :2] = rng.uniform(-0.12, 0.12, 2) * j / s
    return similarity @ perspective


def photograph(
    image: np.ndarray,
    mask: np.ndarray,
    design: PrintDesign,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp by a random pose (:func:`random_pose`), vary the light, add noise."""
    s = design.size
    homography = random_pose(design, rng)
    warped = cv2.warpPerspective(
        image.astype(np.float32),
        homography,
        (s, s),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    warped_mask = (
        cv2.warpPerspective(mask.astype(np.uint8), homography, (s, s), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    )
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    light = rng.uniform(0.85, 1.1) * (1 + gx * (x - 0.5) + gy * (y - 0.5))
    warped = warped * light[..., None] + rng.normal(0, 0.012, warped.shape).astype(np.float32)
    return np.clip(warped, 0, 1), warped_mask
