"""The optimizer's room: clip-and-skip around each update, and the LR schedule's length.

The step uses manual optimization (micro-batches inside one step), so what Lightning's automatic loop would do
around ``optimizer.step`` happens here: clip the global gradient norm, then update only if it is finite. A skipped
update still counts as an optimizer step (μ, the data streams and the LR schedule follow ``global_step``), and too
many skips in a row stop the run. Under 16-mixed the gradients stay scaled until Lightning's precision plugin
unscales them inside ``optimizer.step``, so the clipping happens in the module's ``on_before_optimizer_step``
(``Optimization.clip_unscaled``), and the plugin's ``GradScaler`` skips a non-finite update itself.

A schedule's length: ``CosineDecay`` with ``total_steps: null`` follows ``trainer.max_steps``, and one pinned to
another length warns (``fit_run_length``). A resumed run restores the checkpoint's optimizer state after
``configure_optimizers``, learning rate included; ``Optimization.warn_if_lr_restored`` says so when it differs
from the config's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer, do_nothing_closure
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lit_chord.schedules import CosineDecay

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


def clip_grad_norm(model: nn.Module, max_norm: float) -> Tensor:
    """Clip the global gradient norm of ``model``'s parameters to ``max_norm`` (0: no clipping); the norm before."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
    return grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # DTensor under FSDP2


def grad_scaler(trainer: Trainer) -> torch.amp.GradScaler | None:
    """The precision plugin's ``GradScaler`` (16-mixed), else None."""
    return getattr(trainer.precision_plugin, "scaler", None)


class Optimization:
    """The optimizer and its schedule as configured, and clip-and-skip around each update (with its skip counters,
    which checkpoints keep: ``state_dict``)."""

    def __init__(
        self,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        max_grad_norm: float,
        max_consecutive_skips: int,
    ) -> None:
        if max_grad_norm < 0:
            raise ValueError(f"model.max_grad_norm must be >= 0, got {max_grad_norm}")
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.max_grad_norm, self.max_consecutive_skips = max_grad_norm, max_consecutive_skips
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.scaled_grad_norm: Tensor | None = None  # 16-mixed: the norm clipped after the plugin unscaled
        self.configured_lrs: list[float] = []  # the optimizer's lr per group as configured (warn_if_lr_restored)

    def configure(self, model: nn.Module, max_steps: int) -> Optimizer | dict:
        """``configure_optimizers``'s answer: the optimizer over ``model``'s trainable parameters (LoRA: the
        adapters), and its scheduler, if any, fit to the run's length (``fit_run_length``)."""
        optimizer = self.optimizer_factory([p for p in model.parameters() if p.requires_grad])
        self.configured_lrs = [group["lr"] for group in optimizer.param_groups]  # before a scheduler scales them
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        fit_run_length(scheduler, max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    def warn_if_lr_restored(self, optimizer: Optimizer) -> None:
        """Warn when a resumed run's optimizer keeps the checkpoint's learning rate over this run's: Lightning loads
        the optimizer state (its ``lr``; a scheduler's ``initial_lr``, the rate it scales) after
        ``configure_optimizers``, so a changed ``lr`` would otherwise not apply, silently."""
        restored = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        for configured, kept in zip(self.configured_lrs, restored, strict=True):
            if configured != kept:
                rank_zero_warn(
                    f"the optimizer's lr {configured} does not apply: resuming restores the checkpoint's optimizer "
                    f"state, which keeps lr {kept}"
                )
                return

    def clip_unscaled(self, trainer: Trainer, model: nn.Module) -> None:
        """16-mixed only: Lightning's precision plugin unscales the gradients inside ``optimizer.step`` and calls
        ``on_before_optimizer_step`` right after, so that hook is where clipping sees the true gradients."""
        if grad_scaler(trainer) is not None:
            self.scaled_grad_norm = clip_grad_norm(model, self.max_grad_norm)

    def step(self, trainer: Trainer, optimizer: LightningOptimizer, model: nn.Module, counts_step: bool) -> Tensor:
        """Clip the global gradient norm of ``model``; update only if it is finite, else skip (counted, fatal if
        repeated). The gradient norm before clipping.

        ``counts_step``: this update ends the step, so it advances ``global_step`` and the LR schedule. The earlier
        updates of a step with several go through the same strategy and precision plugin without counting."""
        scaled = grad_scaler(trainer) is not None

        def step() -> None:
            if counts_step:
                optimizer.step()
            else:
                trainer.strategy.optimizer_step(optimizer.optimizer, closure=do_nothing_closure)

        if scaled:
            self.scaled_grad_norm = None
            step()  # the plugin unscales, calls on_before_optimizer_step (clipping), then steps or skips
            assert self.scaled_grad_norm is not None, "on_before_optimizer_step has not run"
            grad_norm = self.scaled_grad_norm
        else:
            grad_norm = clip_grad_norm(model, self.max_grad_norm)
            if torch.isfinite(grad_norm):
                step()
        if torch.isfinite(grad_norm):
            self.consecutive_skips = 0
        else:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if not scaled:
                optimizer.zero_grad(set_to_none=True)
                if counts_step:
                    # Count the step anyway, so μ and the data streams stay aligned with global_step: the two hooks
                    # that LightningOptimizer.step runs around a real step (progress ready/completed, profiler).
                    optimizer._on_before_step()
                    optimizer._on_after_step()
            if self.consecutive_skips >= self.max_consecutive_skips:
                raise RuntimeError(
                    f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient "
                    f"norm (last: {grad_norm.item()}); stopping. Lower the learning rate or check data."
                )
        if counts_step:  # stepped on skipped steps too: the LR follows global_step, as μ
            for config in trainer.lr_scheduler_configs:  # at most one (configure)
                scheduler: LRScheduler = config.scheduler  # ReduceLROnPlateau (it needs a metric) is not supported
                scheduler.step()
        return grad_norm

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = state.get("skipped_steps", 0)
        self.consecutive_skips = state.get("consecutive_skips", 0)


def fit_run_length(scheduler: LRScheduler, max_steps: int) -> None:
    """``CosineDecay`` with ``total_steps: null`` takes the run's length; a schedule pinned to another warns."""
    if isinstance(scheduler, CosineDecay):
        scheduler.follow_run_length(max_steps)  # total_steps: null follows trainer.max_steps
    pinned = getattr(scheduler, "T_max", None) or getattr(scheduler, "total_steps", None)
    if pinned and 0 < max_steps != pinned:
        rank_zero_warn(
            f"the LR schedule {type(scheduler).__name__} spans {pinned} steps but trainer.max_steps is "
            f"{max_steps}; lit_chord.schedules.CosineDecay with total_steps: null follows the run's length"
        )
