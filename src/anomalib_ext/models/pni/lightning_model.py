"""PNI — position and neighbourhood information (ICCV 2023) as an anomalib model.

``anomalib train --model PNI --data MVTecLikeFolder ...``: one pass over the training images collects
their patch features (and the images, as uint8, for the refinement); :meth:`PNI.fit` then builds the
coresets and the position histogram, trains the neighbourhood MLP, and last the refinement network on
synthetic defects (:class:`PNIModel`). On registered images (printed garments) use ``AlignedPNI``: the
same model behind the shared ``align`` host step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from anomalib_ext.models.aligned import AlignedMixin
from anomalib_ext.models.one_pass import OnePassFitMixin
from anomalib_ext.models.pni.torch_model import PNIModel
from anomalib_ext.transforms.align import ORBSettings


class PNI(OnePassFitMixin, MemoryBankMixin, AnomalibModule):
    """PNI anomaly detector.

    Args:
        backbone, layers, pre_trained, backbone_weights, pool_size: the patch embedding (PatchCore's).
        embedding_ratio: |C_emb| / training patches (paper 1%).
        distribution_size: |C_dist| (paper 2048).
        neighbourhood_size: p (paper 9).
        neighbourhood_centre_block: the block around the centre the neighbourhood model does not see (1: the
            paper's, the centre only; 3: also the 8 places whose 3 x 3 aggregation averages the centre).
        use_neighbourhood, use_position: the two distributions (the paper's ablation).
        mlp_depth, mlp_width, mlp_epochs, mlp_batch_size, temperature: the neighbourhood MLP.
        mlp_projection: per-neighbour projection of the features before the MLP (None: the paper's full layer).
        tau: threshold on p(c | Omega); None = the paper's 1 / (2 |C_dist|).
        score_bank: ``embedding`` (the default, as the authors' code: patches are scored against all of C_emb,
            each element allowed through its nearest C_dist element) or ``distribution`` (Eq. 7 as printed:
            against the |C_dist| elements only); see the README.
        blur_sigma: Gaussian smoothing of the map (paper 8).
        refine: the pixel-wise refinement network (paper Sec. 3.3); ``False`` switches it off.
        refine_backbone, refine_backbone_weights, refine_ratio, refine_scale, refine_epochs, refine_batch_size:
            its encoder, the share of the refined map (paper 0.1), its resolution as a fraction of the
            image's (paper 1.0), epochs (paper 3) and batch size (paper 8).
        refine_learning_rate: the refiner's Adam learning rate (paper 1e-4; default 1e-3: at 1e-4 the paper's 3
            epochs leave it far from its task on a few-hundred-image set, see the README).
        refine_validation: training images held out from the refiner's training to stop it when its loss on
            their synthetic defects stops falling (0 = the paper's fixed epochs; else ``refine_epochs`` is the
            most, and the best epoch's weights are kept). The other parts still use every training image.
        refine_patience: epochs without a better validation loss before the refiner's training stops.
        refine_normal_share: share of the refiner's training images left defect-free (0 = the paper's: every
            one has a synthetic defect).
        refine_defect_source: what fills the refiner's synthetic defects: None, other training images of
            the set; ``noise``, colour Perlin textures (no files); or a folder of images (the paper draws
            from all of MVTec AD, i.e. mostly other objects: e.g. DTD or other categories).
        image_score: ``final`` (the max of the refined map, the paper's) or ``coarse`` (before refinement).
        seed: coreset starts, MLP and refiner initialisation, synthetic defects and sample order.
    """

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
        neighbourhood_size: int = 9,
        neighbourhood_centre_block: int = 1,
        use_neighbourhood: bool = True,
        use_position: bool = True,
        mlp_depth: int = 3,
        mlp_width: int = 256,
        mlp_projection: int | None = 32,
        mlp_epochs: int = 5,
        mlp_batch_size: int = 2048,
        temperature: float = 2.0,
        tau: float | None = None,
        score_bank: str = "embedding",
        blur_sigma: float = 8.0,
        refine: bool = True,
        refine_backbone: str = "tf_efficientnet_lite2",
        refine_backbone_weights: str | None = None,
        refine_ratio: float = 0.1,
        refine_scale: float = 0.5,
        image_score: str = "final",
        refine_epochs: int = 3,
        refine_batch_size: int = 8,
        refine_learning_rate: float = 1e-3,
        refine_validation: int = 0,
        refine_patience: int = 2,
        refine_normal_share: float = 0.0,
        refine_defect_source: str | None = None,
        seed: int = 0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = PNIModel(
            backbone,
            tuple(layers),
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            pool_size=pool_size,
            embedding_ratio=embedding_ratio,
            distribution_size=distribution_size,
            neighbourhood_size=neighbourhood_size,
            neighbourhood_centre_block=neighbourhood_centre_block,
            use_neighbourhood=use_neighbourhood,
            use_position=use_position,
            mlp_depth=mlp_depth,
            mlp_width=mlp_width,
            mlp_projection=mlp_projection,
            temperature=temperature,
            tau=tau,
            score_bank=score_bank,
            blur_sigma=blur_sigma,
            refine=refine,
            refine_backbone=refine_backbone,
            refine_backbone_weights=refine_backbone_weights,
            refine_ratio=refine_ratio,
            refine_scale=refine_scale,
            image_score=image_score,
        )
        self.refine_epochs = refine_epochs
        self.refine_batch_size = refine_batch_size
        self.refine_learning_rate = refine_learning_rate
        self.refine_validation = refine_validation
        self.refine_patience = refine_patience
        self.refine_normal_share = refine_normal_share
        self.refine_defect_source = refine_defect_source
        self.mlp_epochs = mlp_epochs
        self.mlp_batch_size = mlp_batch_size
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
            self.model.fit(
                features.to(self.device), epochs=self.mlp_epochs, batch_size=self.mlp_batch_size, seed=self.seed
            )
            if self.model.refiner is not None:
                self.model.fit_refinement(
                    torch.cat(self._images),
                    epochs=self.refine_epochs,
                    batch_size=self.refine_batch_size,
                    learning_rate=self.refine_learning_rate,
                    validation=self.refine_validation,
                    patience=self.refine_patience,
                    normal_share=self.refine_normal_share,
                    defect_source=self.refine_defect_source,
                    seed=self.seed,
                )
        self._features, self._images = [], []

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Scores and maps of the batch."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())


class AlignedPNI(AlignedMixin, PNI):
    """PNI on images aligned to a reference training image (the shared ``align`` host step).

    PNI's position model assumes that a place means the same thing in every image; on printed garments
    photographed with varied pose that holds only after alignment.

    Args:
        orb: alignment settings (:class:`ORBSettings` or a mapping of its fields).
        reference: ``best`` or ``first`` (see :class:`anomalib_ext.models.aligned.AlignedMixin`).
        fill_from_reference: show the reference where an aligned image has no pixels; the default, False,
            repeats the photograph's edge pixels there (measured better: see the README, "Printed garments").
        match_fill_light: light that fill as each photograph is lit (measured: no gain over the plain fill).
        **kwargs: PNI's arguments.
    """

    def __init__(
        self,
        *,
        orb: ORBSettings | dict[str, Any] = ORBSettings(),  # ruff: ignore[function-call-in-default-argument] - frozen dataclass
        reference: str = "best",
        fill_from_reference: bool = False,
        match_fill_light: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._init_alignment(orb, reference, fill_from_reference=fill_from_reference, match_fill_light=match_fill_light)
