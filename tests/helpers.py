"""Shared test helpers: the tiny world's datamodule, a quiet CPU ``Trainer``, a deterministic rollout engine and a
NaN-gradient fault injector."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch import Callback

from lit_chord.datamodule import ChordDataModule
from lit_chord.engines import Completion, SamplingConfig

QUIET = dict(
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
)


def tiny_datamodule(world, **overrides) -> ChordDataModule:
    """The tiny world's streams, 2 prompts x 4 rollouts + 2 expert rows per step, unless ``overrides`` say."""
    args = dict(
        tokenizer=str(world / "model"),
        prompt_data=str(world / "prompts.jsonl"),
        expert_data=str(world / "expert.jsonl"),
        prompts_per_step=2,
        num_generations=4,
        expert_data_ratio=0.2,
        system_prompt=None,
        max_prompt_length=64,
        max_response_length=32,
    )
    return ChordDataModule(**{**args, **overrides})


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
            if not norm.requires_grad:  # LoRA: the base is frozen; poison the first adapter instead
                norm = next(p for p in pl_module.policy.parameters() if p.requires_grad)
            self.handle = norm.register_hook(lambda grad: torch.full_like(grad, float("nan")))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class EchoEngine:
    """Completion j of a prompt: its last 2 + j % 3 tokens reversed, then a stop token (the last one truncated).

    Rollouts are a function of the prompt, so runs that must train on the same rows (1 rank vs 2, two precisions)
    do, and a random tiny model's habit of never stopping does not empty the step."""

    uses_live_policy = False

    def attach(self, policy, stop_token_ids, pad_token_id):
        self.stop = stop_token_ids[0]

    def generate(self, prompt_ids, n, sampling: SamplingConfig):
        groups = []
        for ids in prompt_ids:
            group = []
            for j in range(n):
                body = list(reversed(ids[-(2 + j % 3) :]))
                finished = j != n - 1
                group.append(Completion(body + [self.stop] if finished else body, finished=finished))
            groups.append(group)
        return groups

    def load_weights(self, named_tensors):
        pass
