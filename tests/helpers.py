"""Shared test helpers: a quiet CPU ``Trainer`` for the tiny world."""

from __future__ import annotations

import lightning as L

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
