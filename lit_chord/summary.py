"""One short summary at the start of a run: what it trains, on what, for how long, and where its files go.

A run of hours should say in its first lines what it is about to do, so a wrong file or schedule is caught before
the first rollout rather than read off a curve the next morning. It also warns about one easy slip: a run that
trains on other prompts but still validates on the demo's shipped held-out set.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_chord.datamodule import ChordDataModule
from lit_chord.rollout_callback import RolloutCallback

if TYPE_CHECKING:
    from lit_chord.module import ChordModule

DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "demo"


def run_summary(trainer: Trainer, module: ChordModule, data: ChordDataModule) -> str:
    """The summary's lines: model, data (kept and filtered), held-out sets, μ, steps and directories."""
    hp, dhp = module.hp, data.hp

    def kept(rows: list, field: str) -> str:
        dropped = sum(data.filtered.get(field, {}).values())
        return f"{len(rows)} kept" + (f", {dropped} too long dropped" if dropped else "")

    held_out = ", ".join(f"{name} ({len(prompts)} prompts)" for name, prompts in data.val_sets.items()) or "none"
    checkpoints = [getattr(cb, "dirpath", None) for cb in trainer.checkpoint_callbacks]
    lora, adapters = module.lora_settings, ""
    if lora is not None:
        adapters = f", LoRA r={lora.rank} α={lora.alpha:g} on {lora.target_modules}, base {lora.base_dtype}"
        if module.lora is not None and module.lora.modules_to_save:
            adapters += f", trained in full: {', '.join(module.lora.modules_to_save)}"
    assert module.scorer is not None, "configure_model has not run"
    params = list(module.scorer.parameters())  # DTensor shards count their whole tensor
    total, trained = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    lines = [
        f"model:      {hp.model}{' (random init)' if hp.random_init else ''}{adapters}",
        f"parameters: {total:,} ({trained:,} trained)",
        f"prompts:    {dhp.prompt_data}: {kept(data.prompts, 'prompt_data')}",
        f"expert:     {dhp.expert_data or 'none'}" + (f": {kept(data.expert, 'expert_data')}" if data.expert else ""),
        f"held-out:   {held_out}",
        f"objective:  {module.objective.describe()}",
        f"each step:  {data.prompts_per_step} prompts x {data.num_generations} rollouts + "
        f"{data.experts_per_step if data.expert else 0} expert",
        *(
            f"rollouts:   {type(rollout.engine).__name__}, temperature {rollout.sampling.temperature:g}, at most "
            f"{rollout.sampling.max_new_tokens} new tokens"
            for rollout in trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
            if isinstance(rollout, RolloutCallback)
        ),
        f"steps:      {trainer.max_steps}",
        f"logs:       {trainer.log_dir or trainer.default_root_dir}",
        f"checkpoints: {', '.join(str(c) for c in checkpoints if c) or 'none'}",
    ]
    return "\n".join(lines)


def demo_held_out_with_other_prompts(data: ChordDataModule) -> bool:
    """Whether the run trains on prompts of its own but validates on the demo's shipped held-out set."""

    def in_demo(source: str) -> bool:
        return Path(source).resolve().is_relative_to(DEMO_DATA)

    return not in_demo(data.hp.prompt_data) and any(in_demo(source) for source in data.val_sources.values())


class RunSummary(Callback):
    """Prints ``run_summary`` when ``fit`` starts (rank 0) and warns about a demo held-out set next to other
    prompts."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = ChordDataModule.of(trainer)
        summary = run_summary(trainer, cast("ChordModule", pl_module), data)  # every rank: log_dir is a collective
        rank_zero_info(summary)
        if demo_held_out_with_other_prompts(data):
            rank_zero_warn(
                f"data.prompt_data is {data.hp.prompt_data!r} but data.val_data is still the demo's held-out set "
                f"({', '.join(data.val_sources.values())}); set --data.val_data to held-out prompts of your task"
            )
