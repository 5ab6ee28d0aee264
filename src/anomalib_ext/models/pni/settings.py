"""PNI's engineering settings: how its neighbourhood MLP and its refinement network are sized and trained.

The paper's hyper-parameters (coreset sizes, p, tau, sigma) are PNI's flat arguments; these two groups
hold what the paper fixes once and a 2-core CPU needs smaller (defaults: the CPU default, which
``configs/models/pni.yaml`` documents; the paper's values: ``configs/models/pni_paper.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScoreBank = Literal["embedding", "distribution"]


@dataclass(frozen=True)
class NeighborhoodMLPSettings:
    """The neighbourhood MLP p(c | N_p(x)) and its training.

    Args:
        depth, width: layers and units (paper 10 x 2048; CPU default 3 x 256).
        temperature: the softmax temperature T of p(c | N_p(x)) (paper 2).
        projection: each neighbour's D features mapped to this many by one learnt map before the first
            layer (not in the paper; it was most of PNI's latency); None = the paper's full first layer.
        centre_block: side of the block around the centre the MLP does not see (1: the paper's, the centre
            only; 3: also the places whose 3 x 3 aggregation covers it; measured no better, README).
        epochs: passes over every training place (paper 15; CPU default 5, the first learning-rate period).
        batch_size: places per optimiser step (paper 2048).
    """

    depth: int = 3
    width: int = 256
    temperature: float = 2.0
    projection: int | None = 32
    centre_block: int = 1
    epochs: int = 5
    batch_size: int = 2048


@dataclass(frozen=True)
class RefinerSettings:
    """The pixel-wise refinement network (paper Sec. 3.3) and its training.

    Args:
        backbone: its encoder (offline lite2 in place of the paper's DenseNet-161).
        backbone_weights: a weights file for that encoder.
        ratio: the share of the refined map in the final one (paper 0.1).
        scale: its resolution as a fraction of the image's (paper 1.0; CPU default 0.5, a quarter of the cost).
        epochs: training epochs (paper 3); the most there are with ``validation``.
        batch_size: synthetic images per optimiser step (paper 8).
        learning_rate: Adam's (paper 1e-4; default 1e-3: at 1e-4 the paper's 3 epochs leave it far from its
            task on a few-hundred-image set, see the README).
        validation: training images held out to stop when their synthetic-defect loss stops falling (0 = the
            paper's fixed epochs); the other parts still use every training image.
        patience: epochs without a better validation loss before the training stops.
    """

    backbone: str = "tf_efficientnet_lite2"
    backbone_weights: str | None = None
    ratio: float = 0.1
    scale: float = 0.5
    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-3
    validation: int = 0
    patience: int = 2
