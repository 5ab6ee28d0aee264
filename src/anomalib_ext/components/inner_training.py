"""Training a small part inside ``fit()``: the one loop behind AMFS's F_fusion and PNI's MLP and refiner.

Memory-bank models build their banks in ``fit()``, which Lightning calls inside inference mode (anomalib's
``MemoryBankMixin`` runs it from ``on_validation_start``). A part that learns from what the banks give
(a score fusion, a neighbourhood MLP, a refinement network) then trains there, outside Lightning's loop.
:func:`train_part` is that loop, written once:

- it leaves inference mode and turns gradients on (tensors made before must be cloned by the caller);
- each epoch puts the part in train mode, with the listed BatchNorm modules kept in eval mode;
- ``epoch_losses(epoch)`` yields ``(loss, count)`` per optimiser step; the loop steps the optimiser (and
  a per-epoch scheduler) and records the count-weighted mean loss of every epoch;
- ``validate()`` (optional) gives a validation loss after each epoch: the best epoch's weights are kept
  and training stops after ``patience`` epochs without improvement;
- a progress bar over epochs, the loss history in the log, the part left in eval mode.

Seeding stays with the caller: what it seeds (initial weights, sample order) and when is the part's own
recipe, and moving a seed would change a trained model. Gradient-trained *models* do not use this: they
train in Lightning's own loop (``docs/ADDING_A_MODEL.md``).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable

logger = logging.getLogger(__name__)


@dataclass
class TrainingHistory:
    """Mean training loss per epoch, validation loss per epoch (empty without validation), the epoch kept."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1


@contextmanager
def outside_inference_mode() -> Generator[None, None, None]:
    """Gradients on and inference mode off: ``fit()`` runs inside Lightning's inference mode.

    Tensors made in inference mode cannot be saved for backward: clone them inside this block.
    """
    with torch.inference_mode(mode=False), torch.enable_grad():
        yield


def frozen_batchnorm(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of ``module``: pass as ``frozen`` to keep their (ImageNet) statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # ruff: ignore[private-member-access] - the BN base class


def train_part(
    part: nn.Module,
    optimiser: torch.optim.Optimizer,
    epoch_losses: Callable[[int], Iterable[tuple[torch.Tensor, int]]],
    *,
    epochs: int,
    name: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    frozen: Iterable[nn.Module] = (),
    validate: Callable[[], float] | None = None,
    patience: int | None = None,
    on_epoch_end: Callable[[TrainingHistory], None] | None = None,
    progress: bool = True,
) -> TrainingHistory:
    """Train ``part`` for at most ``epochs`` epochs; returns the loss history (see the module's docstring).

    Args:
        part: the module trained (its mode is set here; left in eval mode).
        optimiser: over the parameters to train (may include parameters outside ``part``).
        epoch_losses: ``epoch -> iterable of (loss, samples)``, one per optimiser step, computed with gradients.
        epochs: passes (the maximum with ``validate``).
        name: what the progress bar and the log call the part.
        scheduler: stepped after every epoch.
        frozen: modules kept in eval mode while ``part`` trains (e.g. :func:`frozen_batchnorm` of an encoder).
        validate: the validation loss after an epoch, ``part`` in eval mode; the best epoch's weights are kept.
        patience: epochs without a better validation loss before training stops (None: never early).
        on_epoch_end: called with the history after every epoch, ``part`` in eval mode (diagnostics).
        progress: show a progress bar over epochs.
    """
    from tqdm import tqdm

    frozen = list(frozen)
    history = TrainingHistory()
    best_state = None
    with outside_inference_mode():
        for epoch in tqdm(range(epochs), desc=name, disable=not progress, leave=False):
            part.train()
            for module in frozen:
                module.eval()
            total, count = 0.0, 0
            for loss, samples in epoch_losses(epoch):
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total, count = total + float(loss.detach()) * samples, count + samples
            if scheduler is not None:
                scheduler.step()
            history.train_loss.append(total / max(count, 1))
            if validate is not None:
                part.eval()
                with torch.no_grad():
                    history.validation_loss.append(validate())
                if history.validation_loss[-1] < min(history.validation_loss[:-1], default=math.inf):
                    history.best_epoch = epoch
                    best_state = {k: v.detach().clone() for k, v in part.state_dict().items()}
            else:
                history.best_epoch = epoch
            if on_epoch_end is not None:
                part.eval()
                on_epoch_end(history)
            if patience is not None and epoch - history.best_epoch >= patience:
                break
        if best_state is not None:
            part.load_state_dict(best_state)
    part.eval()
    logger.info(
        "%s: loss %s per epoch%s",
        name,
        [round(x, 4) for x in history.train_loss],
        f", validation {[round(x, 4) for x in history.validation_loss]}, kept epoch {history.best_epoch + 1}"
        if validate is not None
        else "",
    )
    return history
