"""What a validation logs, and where on the x-axis: the module's held-out bookkeeping.

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

from typing import TYPE_CHECKING, cast

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn

from lit_chord.batch import ValBatch
from lit_chord.metrics import HeldOutMetrics

if TYPE_CHECKING:
    from lit_chord.module import ChordModule


def validated_step(trainer: Trainer) -> int:
    """The optimizer step whose weights a validation scores: ``global_step``, or under ``validate --ckpt_path`` the
    checkpoint's (which the module keeps from ``on_load_checkpoint`` as ``checkpoint_step``)."""
    if trainer.state.fn == TrainerFn.VALIDATING and trainer.ckpt_path is not None:
        step = getattr(trainer.lightning_module, "checkpoint_step", None)
        if step is not None:
            return step
    return trainer.global_step


def set_names(module: ChordModule) -> list[str]:
    """The held-out sets' names, in dataloader order."""
    return getattr(module.trainer.datamodule, "val_set_names", None) or ["heldout"]  # type: ignore[attr-defined]


def log_held_out(module: ChordModule, batch: ValBatch, dataloader_idx: int) -> None:
    """Update and log one batch's ``val/<set>/...`` metrics (and ``val/accuracy`` for the first set)."""
    name, key, size = set_names(module)[dataloader_idx], str(dataloader_idx), len(batch.results)
    if key not in module.val_metrics:
        module.val_metrics[key] = HeldOutMetrics(batch.num_samples, batch.pass_k).to(module.device)
    metrics = cast(HeldOutMetrics, module.val_metrics[key])
    metrics.update(batch.results, batch.counted)
    for suffix, attribute, metric in metrics.updated():
        path = f"val_metrics.{key}.{attribute}"
        module.log(f"val/{name}/{suffix}", metric, batch_size=size, add_dataloader_idx=False, metric_attribute=path)
    path = f"val_metrics.{key}.count"
    module.log(f"val/{name}/count", metrics.count, batch_size=size, add_dataloader_idx=False, metric_attribute=path)
    if dataloader_idx == 0:
        for result, counted in zip(batch.results, batch.counted, strict=True):
            module.val_accuracy.update(result.greedy_correct, weight=float(counted))
        module.log("val/accuracy", module.val_accuracy, prog_bar=True, batch_size=size, add_dataloader_idx=False)
        # The x-axis: optimizer steps taken (Lightning would log the index of the last training batch). The same on
        # every rank; sync_dist only keeps Lightning from asking for it.
        step = float(validated_step(module.trainer))
        module.log("step", step, batch_size=size, add_dataloader_idx=False, sync_dist=True)


def log_before_training(module: ChordModule) -> None:
    """At the end of a fresh run's sanity check: keep ``val_before`` and write every held-out metric at step 0."""
    trainer = module.trainer
    if not trainer.sanity_checking or not module.val_accuracy.update_count or module.val_before is not None:
        return
    module.val_before = float(module.val_accuracy.compute())  # a collective (torchmetrics syncs): every rank
    if trainer.global_step != 0:
        return  # a resumed run's sanity check sees trained weights: not a "before" point
    values = {"val/accuracy": module.val_before}
    names = set_names(module)
    for key, held_out in module.val_metrics.items():  # str(dataloader_idx) -> HeldOutMetrics
        name, metrics = names[int(key)], cast(HeldOutMetrics, held_out)
        for suffix, _, metric in metrics.updated():
            values[f"val/{name}/{suffix}"] = float(metric.compute())
        values[f"val/{name}/count"] = float(metrics.count.compute())
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(values, step=0)
