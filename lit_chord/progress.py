"""``StepProgressBar``: a rich progress bar that counts optimizer steps.

Lightning's bar counts batches of an epoch: with lit_chord's endless step stream it reads ``Epoch 0/-2``, its total
is the steps left, so a resumed run shows ``600/499``, and it prints the logger's version as ``v_num 0.000``. A
CHORD run has one clock, the optimizer step (μ, the data streams and the logs all follow ``global_step``), so this
bar shows ``step 137/600``, right after a resume too, with μ, the mean reward and the held-out accuracy.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class StepProgressBar(RichProgressBar):
    @property
    @override
    def total_train_batches(self) -> int | float:
        """The run's length in optimizer steps (``trainer.max_steps``), not the batches left."""
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else super().total_train_batches

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'step':{len(self.validation_description)}}"  # padded like the validation bar's, as Lightning does

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:  # a run resumed mid-epoch skips on_train_epoch_start
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)  # a resumed run starts where it stopped

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update(self.train_progress_bar_id, trainer.global_step)

    @override
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version, not a metric
        return metrics
