"""The ``align`` host step: alignment around any model, and its files in an export folder."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from anomalib_ext.host_steps import HostStep, register_host_step
from anomalib_ext.transforms.align.batch import BatchAligner
from anomalib_ext.transforms.align.settings import ORBSettings

logger = logging.getLogger(__name__)


@register_host_step
class AlignmentStep(HostStep):
    """Host step ``align``: ORB alignment to a reference before the model, maps warped back after it.

    Any model can use it (AMFS does by default); its export folder holds the reference image and
    ``metadata.json`` its settings, so the Inferencer rebuilds the same step by name.
    """

    name = "align"
    REFERENCE_FILE = "align_reference.png"

    def __init__(
        self,
        reference: np.ndarray,
        settings: ORBSettings = ORBSettings(),
        *,
        fill_from_reference: bool = True,
        mark_unseen: bool = False,
    ) -> None:
        self.reference_image = np.ascontiguousarray(reference)  # (H, W, 3) uint8 RGB
        self.settings = settings
        self.fill_from_reference = fill_from_reference
        self.mark_unseen = mark_unseen
        self.aligner = BatchAligner(
            self.reference_image,
            settings,
            fill_from_reference=fill_from_reference,
            mark_unseen=mark_unseen,
        )

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Aligned images and each image's homography (identity where alignment failed, counted in ``aligner``)."""
        aligned, homographies, _ = self.aligner.align(images)
        return aligned, list(homographies)

    def restore(self, maps: torch.Tensor, states: Sequence[np.ndarray]) -> torch.Tensor:  # ruff: ignore[no-self-use] - the protocol
        """Maps warped back into each input's frame."""
        return BatchAligner.warp_back(maps, states)

    def report(self) -> dict[str, Any]:
        """``align_fallbacks``: images that fell back to the identity, of all aligned so far."""
        return {"align_fallbacks": f"{self.aligner.failures}/{self.aligner.total}"}

    def save(self, folder: Path) -> dict[str, Any]:
        """The reference as a PNG (RGB) and the ORB settings."""
        if not cv2.imwrite(
            str(Path(folder) / self.REFERENCE_FILE),
            np.ascontiguousarray(self.reference_image[..., ::-1]),
        ):
            msg = f"Could not write the alignment reference {Path(folder) / self.REFERENCE_FILE}."
            raise OSError(msg)
        return {
            "reference": self.REFERENCE_FILE,
            "fill_from_reference": self.fill_from_reference,
            "mark_unseen": self.mark_unseen,
            "orb": dataclasses.asdict(self.settings),
        }

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> AlignmentStep:
        """From an export folder: its reference image and settings (unknown ORB fields are ignored)."""
        from anomalib_ext.data.mvtec_like import read_rgb
        from anomalib_ext.export_format import ModelFilesError

        path = Path(folder) / config["reference"]
        if not path.is_file():
            msg = f"{path} (the alignment reference) is missing from {folder}: export the model again."
            raise ModelFilesError(msg)
        if config.get("match_fill_light"):
            msg = (
                f"{folder} was exported before anomalib-ext 0.2 with match_fill_light, an option that was removed "
                "(measured no gain): export the model again with this version."
            )
            raise ModelFilesError(msg)
        fields = {f.name for f in dataclasses.fields(ORBSettings)}
        settings = ORBSettings(**{k: v for k, v in config.get("orb", {}).items() if k in fields})
        return cls(
            read_rgb(path),
            settings,
            fill_from_reference=config.get("fill_from_reference", False),
            mark_unseen=config.get("mark_unseen", False),  # exports older than the option never marked
        )
