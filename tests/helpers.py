"""Shared test helpers: a quiet CPU ``Trainer`` for the tiny world, and a NaN-gradient fault injector."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch import Callback

QUIET = dict(
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
)


def cpu_trainer(**overrides) -> L.Trainer:
    """A CPU ``Trainer`` without progress bar, summary, sanity check or validation, unless ``overrides`` ask."""
    return L.Trainer(**{**QUIET, **overrides})


class NanGradient(Callback):
    """Poisons the gradient of one parameter with NaN at the given 1-based steps."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.handle = steps, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 in self.steps:
            norm = pl_module.policy.get_decoder().norm.weight
            self.handle = norm.register_hook(lambda grad: torch.full_like(grad, float("nan")))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
