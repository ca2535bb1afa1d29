"""What a validation logs, and where on the x-axis: ``HeldOutScores``, the held-out bookkeeping in one room.

Held-out prompts arrive already answered by the rollout callback (greedy and sampled), one dataloader per named set;
each set's ``HeldOutMetrics`` (``lit_chord.metrics``) are logged as ``val/<set>/...`` and the first set's greedy
accuracy as ``val/accuracy``. Rows not ``counted`` (padding that keeps ranks in step, ``HeldOutShard``) weigh 0.

Why the step is logged explicitly: Lightning logs a validation at the index of the last training batch, so the
validation after optimizer step 100 would land at step 99 while its checkpoint and sample file say 100, and it never
logs the sanity check at all. Here every validation is logged at ``global_step`` (the optimizer steps taken: 0
before training) and the k-th training step at k, by logging the ``step`` key Lightning reads as the x-axis; the
sanity check of a fresh run is written to the loggers at step 0, so the curves start with the "before" point.
``validate --ckpt_path`` logs at the checkpoint's step (``validated_step``): Lightning restores only the weights for
``validate``, not the loops, so ``global_step`` reads 0 there, and a trained policy's scores would read as the
untrained one's.
"""

from __future__ import annotations

from typing import cast

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric

from lit_chord.batch import ValBatch
from lit_chord.metrics import HeldOutMetrics


def validated_step(trainer: Trainer) -> int:
    """The optimizer step whose weights a validation scores: ``global_step``, or under ``validate --ckpt_path`` the
    checkpoint's (which the module keeps from ``on_load_checkpoint`` as ``checkpoint_step``)."""
    if trainer.state.fn == TrainerFn.VALIDATING and trainer.ckpt_path is not None:
        step = getattr(trainer.lightning_module, "checkpoint_step", None)
        if step is not None:
            return step
    return trainer.global_step


def set_names(trainer: Trainer) -> list[str]:
    """The held-out sets' names, in dataloader order."""
    return getattr(getattr(trainer, "datamodule", None), "val_set_names", None) or ["heldout"]  # ours, or any


class HeldOutScores(nn.Module):
    """The held-out metrics of every set, the first set's greedy accuracy, and that accuracy before training.

    An ``nn.Module`` child of the LightningModule (``module.held_out``), so Lightning moves, syncs and resets its
    torchmetrics; the LightningModule's validation hooks hand it their batches and nothing else writes its state.
    """

    ATTRIBUTE = "held_out"  # where the LightningModule holds it: Lightning logs torchmetrics by attribute path

    def __init__(self) -> None:
        super().__init__()
        self.accuracy = MeanMetric()  # "val/accuracy": the first held-out set's greedy accuracy
        self.sets = nn.ModuleDict()  # str(dataloader_idx) -> HeldOutMetrics, made on first use
        self.before: float | None = None  # the sanity check's accuracy, i.e. before training

    def log_batch(self, module: LightningModule, batch: ValBatch, dataloader_idx: int) -> None:
        """Update and log one batch's ``val/<set>/...`` metrics (and ``val/accuracy`` for the first set)."""
        name, key, size = set_names(module.trainer)[dataloader_idx], str(dataloader_idx), len(batch.results)
        if key not in self.sets:
            self.sets[key] = HeldOutMetrics(batch.num_samples, batch.pass_k).to(module.device)
        metrics = cast(HeldOutMetrics, self.sets[key])
        metrics.update(batch.results, batch.counted)
        prefix = f"{self.ATTRIBUTE}.sets.{key}"
        for suffix, attribute, metric in metrics.updated():
            path = f"{prefix}.{attribute}"
            module.log(f"val/{name}/{suffix}", metric, batch_size=size, add_dataloader_idx=False, metric_attribute=path)
        path = f"{prefix}.count"
        module.log(f"val/{name}/count", metrics.count, batch_size=size, add_dataloader_idx=False, metric_attribute=path)
        if dataloader_idx == 0:
            for result, counted in zip(batch.results, batch.counted, strict=True):
                self.accuracy.update(result.greedy_correct, weight=float(counted))
            path = f"{self.ATTRIBUTE}.accuracy"
            module.log(
                "val/accuracy",
                self.accuracy,
                prog_bar=True,
                batch_size=size,
                add_dataloader_idx=False,
                metric_attribute=path,
            )
            # The x-axis: optimizer steps taken (Lightning would log the index of the last training batch). The same
            # on every rank; sync_dist only keeps Lightning from asking for it.
            step = float(validated_step(module.trainer))
            module.log("step", step, batch_size=size, add_dataloader_idx=False, sync_dist=True)

    def log_before_training(self, trainer: Trainer) -> None:
        """At the end of a fresh run's sanity check: keep ``before`` and write every held-out metric at step 0."""
        if not trainer.sanity_checking or not self.accuracy.update_count or self.before is not None:
            return
        self.before = float(self.accuracy.compute())  # a collective (torchmetrics syncs): every rank
        if trainer.global_step != 0:
            return  # a resumed run's sanity check sees trained weights: not a "before" point
        values = {"val/accuracy": self.before}
        names = set_names(trainer)
        for key, held_out in self.sets.items():  # str(dataloader_idx) -> HeldOutMetrics
            name, metrics = names[int(key)], cast(HeldOutMetrics, held_out)
            for suffix, _, metric in metrics.updated():
                values[f"val/{name}/{suffix}"] = float(metric.compute())
            values[f"val/{name}/count"] = float(metrics.count.compute())
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=0)
