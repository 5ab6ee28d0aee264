"""PNI — position and neighbourhood information (ICCV 2023) as an anomalib model.

``anomalib train --model PNI --data MVTecLikeFolder ...``: one pass over the training images collects
their patch features (and the images, as uint8, for the refinement); :meth:`PNI.fit` then builds the
coresets and the position histogram, trains the neighbourhood MLP, and last the refinement network on
synthetic defects (:class:`PNIModel`). On registered images (printed garments) use ``AlignedPNI``: the
same model behind the shared ``align`` host step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from anomalib_ext.models.aligned import AlignedMixin
from anomalib_ext.models.base import HostStepsMixin
from anomalib_ext.models.legacy import Removed
from anomalib_ext.models.one_pass import OnePassFitMixin
from anomalib_ext.models.pni.settings import NeighborhoodMLPSettings, RefinerSettings, ScoreBank
from anomalib_ext.models.pni.torch_model import PNIModel
from anomalib_ext.settings import arguments_for


class PNI(HostStepsMixin, OnePassFitMixin, MemoryBankMixin, AnomalibModule):
    """PNI anomaly detector.

    Args:
        backbone, layers, pre_trained, backbone_weights, pool_size: the patch embedding (PatchCore's; the
            paper's WRN-50 ``layer2``/``layer3``, patch 3: ``configs/models/pni_paper.yaml``).
        embedding_ratio: |C_emb| / training patches (paper 1%).
        distribution_size: |C_dist| (paper 2048), taken from C_emb by the same greedy selection.
        neighborhood_size: p of the p x p neighbourhood (paper 9), also the position histogram's window.
        tau: threshold on p(c | Omega); None = the paper's 1 / (2 |C_dist|).
        blur_sigma: Gaussian smoothing of the map (paper 8).
        use_neighborhood, use_position: the two distributions (the paper's ablation); with neither, every
            C_dist element is allowed.
        refine: the pixel-wise refinement network (paper Sec. 3.3).
        score_bank: ``embedding`` (as the authors' code: patches are scored against all of C_emb, each
            element allowed through its nearest C_dist element) or ``distribution`` (Eq. 7 as printed:
            against the |C_dist| elements only); see the README.
        mlp: the neighbourhood MLP's size, softmax temperature and training (:class:`NeighborhoodMLPSettings`).
        refiner: the refinement network's encoder, size and training (:class:`RefinerSettings`).
        seed: coreset starts, MLP and refiner initialisation, synthetic defects and sample order.
    """

    legacy_arguments: ClassVar[dict[str, Any]] = {  # anomalib-ext 0.1 checkpoints (models/legacy.py)
        "neighbourhood_size": "neighborhood_size",
        "use_neighbourhood": "use_neighborhood",
        "neighbourhood_centre_block": ("mlp", "centre_block"),
        **{f"mlp_{field}": ("mlp", field) for field in ("depth", "width", "projection", "epochs", "batch_size")},
        **{
            f"refine_{field}": ("refiner", field)
            for field in (
                "backbone",
                "backbone_weights",
                "ratio",
                "scale",
                "epochs",
                "batch_size",
                "learning_rate",
                "validation",
                "patience",
            )
        },
        "temperature": ("mlp", "temperature"),
        "image_score": Removed("final"),
        "refine_normal_share": Removed(0.0),
        "refine_defect_source": Removed(None),
    }

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite2",
        layers: Sequence[str] = ("blocks.2", "blocks.4"),
        *,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        pool_size: int = 3,
        embedding_ratio: float = 0.01,
        distribution_size: int = 2048,
        neighborhood_size: int = 9,
        tau: float | None = None,
        blur_sigma: float = 8.0,
        use_neighborhood: bool = True,
        use_position: bool = True,
        refine: bool = True,
        score_bank: ScoreBank = "embedding",
        mlp: NeighborhoodMLPSettings = NeighborhoodMLPSettings(),
        refiner: RefinerSettings = RefinerSettings(),
        seed: int = 0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        network_arguments = arguments_for(PNIModel, locals())
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = PNIModel(**network_arguments)
        self.seed = seed
        self._features: list[torch.Tensor] = []
        self._images: list[torch.Tensor] = []  # uint8 (a quarter of float32's memory), for the refinement

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:
        """Keep the patch features of the batch's normal images."""
        del args, kwargs
        images = batch.image if batch.gt_label is None else batch.image[batch.gt_label == 0]
        with torch.no_grad():
            self._features.append(self.model.embedding(images).cpu())
        if self.model.refiner is not None:
            self._images.append((images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def fit(self) -> None:
        """Coresets, position histogram, neighbourhood MLP, refinement (seeded; global RNGs left as they were)."""
        features = torch.cat(self._features) if self._features else torch.empty(0)
        if len(features) < 2:
            msg = (
                f"PNI needs at least 2 normal training images, got {len(features)}: add normal images to the "
                "training folder (the refinement pastes one training image into another)."
            )
            raise ValueError(msg)
        with isolate_rng():  # the model seeds what it draws (coresets, MLP weights, sample order) from `seed`
            self.model.fit(features.to(self.device), seed=self.seed)
            if self.model.refiner is not None:
                self.model.fit_refinement(torch.cat(self._images), seed=self.seed)
        self._features, self._images = [], []


class AlignedPNI(AlignedMixin, PNI):
    """PNI on images aligned to a reference training image (the shared ``align`` host step).

    PNI's position model assumes that a place means the same thing in every image; on printed garments
    photographed with varied pose that holds only after alignment. Takes PNI's arguments and the alignment's
    (:class:`~anomalib_ext.models.aligned.AlignedMixin`; edge fill by default, measured better: README).
    """
