"""What every model of the plugin shares: host steps around the network, the eval steps, the export routes.

A model mixes in :class:`HostStepsMixin` before ``AnomalibModule`` and overrides :meth:`host_steps`
(AMFS: alignment when ``align=True``). It then gets

- ``validation_step`` / ``test_step`` / ``predict_step``: host ``prepare`` -> ``self.model`` (raw scores
  and maps) -> host ``restore``, so anomalib's post-processor, evaluator and visualizer see maps in the
  input frame;
- :meth:`predict_end_to_end`: the deployed pipeline (host steps around anomalib's forward, normalised),
  which the Inferencer's output must equal;
- ``to_openvino`` / ``to_onnx`` (anomalib's export routes, ``anomalib export``): they also write the
  host-step files and ``metadata.json``, so their output runs in ``anomalib-ext infer``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from anomalib.models.components import AnomalibModule

from anomalib_ext.export_fixes import traceable
from anomalib_ext.export_format import model_input_size, write_export_metadata
from anomalib_ext.host_steps import HostPipeline, predict_end_to_end
from anomalib_ext.models.legacy import VERSION_KEY, upgrade_hyperparameters

if TYPE_CHECKING:
    import torch
    from anomalib.data import Batch, InferenceBatch


class HostStepsMixin:
    """Host steps, eval steps and export routes for an ``AnomalibModule``.

    Its ``self.model`` returns ``InferenceBatch(pred_score, anomaly_map)`` on prepared images.
    """

    model: torch.nn.Module

    def host_steps(self) -> HostPipeline:  # ruff: ignore[no-self-use] - models override it
        """The steps around the network (none by default)."""
        return HostPipeline()

    def prepare_batch_images(self, images: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """Host ``prepare`` on (B, 3, H, W) images as anomalib's PreProcessor hands them to the ``*_step`` methods.

        Models whose pre-processor only resizes see images in [0, 1] here; a model whose pre-processor also
        normalises overrides this (:class:`anomalib_ext.models.aligned.AlignedMixin`).
        """
        return self.host_steps().prepare(images)

    def predict_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw ``pred_score`` and ``anomaly_map`` (input frame) for (B, 3, H, W) images from the PreProcessor."""
        prepared, states = self.prepare_batch_images(images)
        output = self.model(prepared)
        return {"pred_score": output.pred_score, "anomaly_map": self.host_steps().restore(output.anomaly_map, states)}

    def predict_end_to_end(self, images: torch.Tensor) -> InferenceBatch:
        """Normalised scores and maps as the deployed model gives them (see :func:`host_steps.predict_end_to_end`)."""
        return predict_end_to_end(self, images)

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Raw scores and maps in the input frame; anomalib's callbacks normalise and evaluate them."""
        del args, kwargs
        return batch.update(**self.predict_raw(batch.image))

    def test_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """As :meth:`validation_step`."""
        del args, kwargs
        return batch.update(**self.predict_raw(batch.image))

    def predict_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """As :meth:`validation_step`."""
        del args, kwargs
        return batch.update(**self.predict_raw(batch.image))

    def to_openvino(self, export_root: Path | str, *args, **kwargs) -> Path:
        """Anomalib's OpenVINO export, plus host-step files and ``metadata.json`` beside the IR."""
        with traceable(self):
            path = Path(AnomalibModule.to_openvino(self, export_root, *args, **kwargs))
        write_export_metadata(self, path.parent, self._export_input_size(args, kwargs))
        return path

    def to_onnx(self, export_root: Path | str, *args, **kwargs) -> Path:
        """Anomalib's ONNX export, plus host-step files and ``metadata.json`` beside the model."""
        with traceable(self):
            path = Path(AnomalibModule.to_onnx(self, export_root, *args, **kwargs))
        write_export_metadata(self, path.parent, self._export_input_size(args, kwargs))
        return path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the anomalib-ext version: checkpoints without it predate the grouped settings."""
        from anomalib_ext import __version__

        super().on_save_checkpoint(checkpoint)
        checkpoint[VERSION_KEY] = __version__

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path | IO[bytes], *args, **kwargs) -> AnomalibModule:
        """Load as anomalib does; a checkpoint made before 0.2 has its arguments converted first (:mod:`legacy`)."""
        import torch

        source = checkpoint_path
        if isinstance(checkpoint_path, (str, Path)):
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
            if isinstance(checkpoint, dict) and VERSION_KEY not in checkpoint and "hyper_parameters" in checkpoint:
                old = checkpoint["hyper_parameters"]
                new = upgrade_hyperparameters(cls, dict(old), str(checkpoint_path))
                if new != dict(old):
                    checkpoint["hyper_parameters"] = new
                    source = io.BytesIO()
                    torch.save(checkpoint, source)
                    source.seek(0)
        return super().load_from_checkpoint(source, *args, **kwargs)

    def _export_input_size(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int] | None:
        """The size anomalib exported at: the call's ``input_size`` (third argument), else the pre-processor's."""
        size = kwargs.get("input_size", args[1] if len(args) > 1 else None)
        return tuple(size) if size else model_input_size(self)
