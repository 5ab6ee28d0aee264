"""AMFS's grouped settings: the positional matching (ours) and the training of F_fusion (the paper's).

The paper's hyper-parameters (pyramid levels, coreset ratio, k, the scoring) are AMFS's flat arguments;
these groups hold how the positional banks and F_fusion's training set are built. A YAML block
(``positional: {radius: 2}``) or a mapping of some fields sets them; the rest keep their defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Matching = Literal["positional", "blocks", "both"]
Scoring = Literal["fusion", "fusion_softmax", "linear", "max", "mean"]
FusionAnomaly = Literal["perlin", "cutpaste", "scar"]

# Anomaly kinds F_fusion can be trained on. ``perlin`` is the paper's (DRAEM: texture in Perlin blobs,
# locally abnormal). ``cutpaste`` moves a small piece of the image itself elsewhere (0.2-2% of the area,
# GPD's defect scale): locally normal content at the wrong place, the positional anomaly AMFS is for.
# ``scar`` is CutPaste-Scar, a thin strip of the image.
FUSION_ANOMALIES = get_args(FusionAnomaly)


def check_fusion_anomalies(kinds: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` as a tuple, or a ValueError naming the allowed kinds."""
    kinds = tuple(kinds)
    if not kinds or set(kinds) - set(FUSION_ANOMALIES):
        msg = f"fusion_anomalies must be a non-empty subset of {FUSION_ANOMALIES}, got {list(kinds)}"
        raise ValueError(msg)
    return kinds


@dataclass(frozen=True)
class PositionalSettings:
    """Positional matching: each patch against the training patches near its aligned position (not in the paper).

    Args:
        radius: the window in feature cells per axis (a cell is 8 px at the default layers).
        baseline: subtract each position's leave-one-out mean training distance (places that vary in normal
            images, such as fabric weave and borders, stop outscoring places that never vary, the print).
        scale: also divide by each position's leave-one-out spread, floored at its median (a z-score per
            place). Needs ``baseline``.
        unseen_margin: the image score leaves out the cells the photograph did not show (filled from the
            reference by alignment) and this many cells around them; None scores every cell. Needs
            ``fill_from_reference`` (the align step then marks those pixels and the graph fills them).
        max_images: at most this many training images in the bank (memory grows with it: images x D x h x w
            floats); a seeded random subset beyond.
        min_images: fall back to a global bank (PatchCore behaviour) with fewer training images than this.
    """

    radius: int = 1
    baseline: bool = True
    scale: bool = True
    unseen_margin: int | None = 2
    max_images: int = 128
    min_images: int = 8

    def __post_init__(self) -> None:
        """Reject contradictory settings at construction, not after the banks are built."""
        if self.unseen_margin is not None and self.unseen_margin < 0:
            msg = f"unseen_margin must be >= 0 feature cells or None (score every cell), got {self.unseen_margin}."
            raise ValueError(msg)
        if self.scale and not self.baseline:
            msg = "positional scale divides the baseline-corrected distance: with baseline=False set scale=False too."
            raise ValueError(msg)


@dataclass(frozen=True)
class FusionSettings:
    """F_fusion's training set and training (the paper's learned score fusion, ``matching="blocks"``).

    Args:
        holdout: fraction of training images kept out of the banks to train F_fusion on (images that are
            in the banks score ~0 and would teach the fusion nothing).
        max_images: at most this many held-out images (F_fusion is small; more only costs time).
        holdout_to_banks: after F_fusion is trained, rebuild the banks from every training image but the
            reference, so the held-out images are not lost to the banks.
        samples_per_image: synthetic anomalies and augmented normals made per held-out image.
        epochs: training epochs.
        anomalies: synthetic anomaly kinds, cycled per sample: ``perlin`` (the paper's DRAEM-style texture
            blobs), ``cutpaste`` (small pieces of the image moved elsewhere: locally normal, wrongly placed),
            ``scar`` (CutPaste-Scar strips).
        texture_dir: textures for the ``perlin`` anomalies (e.g. DTD); None = anomalib's noise textures.
    """

    holdout: float = 0.2
    max_images: int = 32
    holdout_to_banks: bool = True
    samples_per_image: int = 8
    epochs: int = 60
    anomalies: tuple[FusionAnomaly, ...] = ("perlin",)
    texture_dir: str | None = None

    def __post_init__(self) -> None:
        """A YAML list becomes a tuple; an unknown anomaly kind fails here, not after the banks."""
        object.__setattr__(self, "anomalies", check_fusion_anomalies(self.anomalies))
