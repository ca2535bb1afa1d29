"""``RolloutCallback``: generate, score and hand rollouts to the step that uses them.

Generation happens in ``on_train_batch_start``, after Lightning has fetched the step's prompts and before
``training_step``, so rollouts always come from the weights of the step that trains on them (a buffer filled
for the dataloader would be one step stale because Lightning prefetches a batch). Before generating, the
engine receives the policy's weights if an optimizer step happened since the last sync; the last synced step
starts at -1, so a run resumed from a checkpoint pushes the restored weights before its first rollout.

Generation is seeded by ``(seed, step, rank)``, so a resumed run samples what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, cast

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from lit_chord.batch import Sequence, StepBatch, ValBatch, ValResult
from lit_chord.engines import Completion, Engine, SamplingConfig
from lit_chord.loss import group_advantages
from lit_chord.metrics import pass_at_k
from lit_chord.rewards import math_boxed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lit_chord.module import ChordModule

log = logging.getLogger(__name__)
RewardFn = Callable[[str, str], float]


class RolloutCallback(Callback):
    def __init__(
        self,
        engine: Engine | None = None,
        reward_fn: RewardFn = math_boxed,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        scale_advantages_by_std: bool = True,
        val_temperature: float = 1.0,
        val_num_samples: int = 4,
        val_pass_k: int | None = None,
        seed: int = 42,
    ) -> None:
        """The engine, the reward and how rollouts are sampled.

        Args:
            engine: Rollout engine (``class_path``): ``lit_chord.engines.transformers_engine.TransformersEngine``
                (default; CPU-friendly) or ``lit_chord.engines.vllm_engine.VLLMEngine``.
            reward_fn: ``reward(completion, answer) -> float``, as an import path, e.g.
                ``lit_chord.rewards.math_boxed`` (default) or ``lit_chord.rewards.exact_match``.
            temperature: Sampling temperature of rollouts; the trainer scales its logits by the same value.
            top_p: Nucleus sampling threshold.
            max_new_tokens: Longest completion; longer ones are truncated and contribute no tokens to the loss.
            scale_advantages_by_std: GRPO's (r − mean)/std; False gives Dr. GRPO's r − mean.
            val_temperature: Temperature of the ``n`` validation samples (greedy is always measured too).
            val_num_samples: ``n`` samples per held-out prompt for ``val/<set>/avg@k`` and ``val/<set>/pass@k``
                (0: greedy only).
            val_pass_k: ``k`` of the unbiased pass@k estimate from the ``n`` samples, 1 <= k <= n (None: k = n).
            seed: Base seed; each generation call uses ``(seed, step, rank)``.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for rollouts, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if val_num_samples < 0:
            raise ValueError(f"val_num_samples must be >= 0, got {val_num_samples}")
        if val_pass_k is not None and not 1 <= val_pass_k <= val_num_samples:
            raise ValueError(f"val_pass_k must lie in [1, val_num_samples={val_num_samples}], got {val_pass_k}")
        if engine is None:
            from lit_chord.engines.transformers_engine import TransformersEngine

            engine = TransformersEngine()
        self.engine = engine
        self.reward_fn = reward_fn
        self.sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self.scale_advantages_by_std = scale_advantages_by_std
        self.val_temperature, self.val_num_samples = val_temperature, val_num_samples
        self.val_pass_k = val_pass_k or val_num_samples
        self.seed = seed
        self.last_synced_step = -1
        self.tokenizer: PreTrainedTokenizerBase | None = None  # the datamodule's, set by setup
        self.attached_to: nn.Module | None = None

    # ----- lifecycle --------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.tokenizer = trainer.datamodule.tokenizer  # type: ignore[attr-defined]

    def attach(self, pl_module: ChordModule) -> None:
        """Bind the engine to the policy once it exists (after ``configure_model`` and device placement)."""
        if self.attached_to is pl_module.policy:
            return
        tokenizer = self.tokenizer
        assert tokenizer is not None and pl_module.policy is not None, "setup and configure_model have not run"
        stop_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
        self.engine.attach(pl_module.policy, stop_ids, tokenizer.pad_token_id)
        self.attached_to = pl_module.policy

    def sync_weights(self, trainer: Trainer, pl_module: ChordModule) -> float:
        """Push the policy's weights into the engine if the optimizer stepped since the last push."""
        self.attach(pl_module)
        if trainer.global_step == self.last_synced_step:
            return 0.0
        start = time.perf_counter()
        self.engine.load_weights(pl_module.full_parameters())
        self.last_synced_step = trainer.global_step
        return time.perf_counter() - start

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = state_dict["seed"]
        self.last_synced_step = -1  # the engine still holds the initial weights: push the restored ones

    # ----- rollouts ---------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: StepBatch, batch_idx: int):
        module = cast("ChordModule", pl_module)
        sync_seconds = self.sync_weights(trainer, module)
        seed = self.seed + 1_000_003 * batch.step + 7919 * trainer.global_rank
        start = time.perf_counter()
        sampling = dataclasses.replace(self.sampling, seed=seed)
        groups = self.generate(module, [p.prompt_ids for p in batch.prompts], batch.num_generations, sampling)
        gen_seconds = time.perf_counter() - start
        # The training step's own randomness (dropout, if the model has any) follows (seed, step, rank) too: Lightning
        # does not checkpoint RNG states, so a resumed run would otherwise draw other masks than an uninterrupted one.
        torch.manual_seed(seed + 1)
        rewards, errors = self.score(groups, [p.answer for p in batch.prompts])
        advantages = group_advantages(rewards, batch.num_generations, scale_by_std=self.scale_advantages_by_std)
        completions = [c for group in groups for c in group]
        prompts = [p for p in batch.prompts for _ in range(batch.num_generations)]
        batch.rollouts = [
            Sequence(
                p.prompt_ids,
                c.token_ids,
                is_expert=False,
                advantage=float(a),
                loss_on_response=c.finished,
                engine_logprobs=c.logprobs,
            )
            for p, c, a in zip(prompts, completions, advantages.tolist(), strict=True)
        ]
        batch.temperature = self.sampling.temperature
        batch.train = trainer.datamodule.collate_rollouts(batch)  # type: ignore[attr-defined]
        batch.metrics = rollout_metrics(rewards, completions, batch.num_generations, errors)
        batch.metrics.update({"rollout/gen_seconds": gen_seconds, "rollout/sync_seconds": sync_seconds})

    def generate(
        self, pl_module: ChordModule, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig
    ) -> list[list[Completion]]:
        with pl_module.gathered() if self.engine.uses_live_policy else nullcontext():
            return self.engine.generate(prompt_ids, n, sampling)

    def score(self, groups: list[list[Completion]], answers: list[str]) -> tuple[Tensor, int]:
        """Rewards laid out group after group; a reward function that raises or returns a non-number scores 0."""
        rewards, errors, first_error = [], 0, None
        for group, answer in zip(groups, answers, strict=True):
            for completion in group:
                text = self.decode(completion.token_ids)
                try:
                    value = self.reward_fn(text, answer)
                    if isinstance(value, (str, bytes)):  # float("1") would pass silently
                        raise TypeError(f"reward_fn returned {value!r}, not a number")
                    reward = float(value)
                    if not math.isfinite(reward):
                        raise ValueError(f"non-finite reward {reward}")
                except Exception as err:  # a bad reward must not kill a long run; it is logged and counted
                    reward, errors, first_error = 0.0, errors + 1, first_error or err
                rewards.append(reward)
        if errors:
            log.warning(
                "reward_fn failed on %d of %d completions (scored 0); first: %r", errors, len(rewards), first_error
            )
        return torch.tensor(rewards, dtype=torch.float32), errors

    def decode(self, token_ids: list[int]) -> str:
        """A completion's text, without special tokens."""
        assert self.tokenizer is not None, "setup has not run"
        return cast(str, self.tokenizer.decode(token_ids, skip_special_tokens=True))  # one sequence: one string

    # ----- validation -------------------------------------------------------------------------------------------
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: ValBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        module = cast("ChordModule", pl_module)
        self.sync_weights(trainer, module)
        prompt_ids = [p.prompt_ids for p in batch.prompts]
        answers = [p.answer for p in batch.prompts]
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=self.sampling.max_new_tokens)
        greedy_groups = self.generate(module, prompt_ids, 1, greedy)
        greedy_rewards, _ = self.score(greedy_groups, answers)
        sampled: list[list[float]] = [[] for _ in prompt_ids]
        if self.val_num_samples:
            sampling = SamplingConfig(
                temperature=self.val_temperature,
                top_p=self.sampling.top_p,
                max_new_tokens=self.sampling.max_new_tokens,
                seed=self.seed + batch_idx,
            )
            groups = self.generate(module, prompt_ids, self.val_num_samples, sampling)
            rewards, _ = self.score(groups, answers)
            sampled = (rewards >= 1.0).float().view(len(prompt_ids), -1).tolist()
        batch.results = [
            ValResult(
                greedy_correct=float(reward >= 1.0),
                greedy_length=len(group[0].token_ids),
                sample_correct=samples,
                completion=self.decode(group[0].token_ids),
                greedy_reward=reward,
                pass_at_k=pass_at_k(len(samples), int(sum(samples)), self.val_pass_k) if samples else None,
            )
            for reward, group, samples in zip(greedy_rewards.tolist(), greedy_groups, sampled, strict=True)
        ]


def rollout_metrics(rewards: Tensor, completions: list[Completion], group_size: int, errors: int) -> dict[str, float]:
    """Scalar summaries of one step's rollouts."""
    grouped = rewards.view(-1, group_size)
    lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
    return {
        "rollout/reward_mean": rewards.mean().item(),
        "rollout/reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        "rollout/accuracy": (rewards >= 1.0).float().mean().item(),
        "rollout/response_len": lengths.mean().item(),
        "rollout/truncated_frac": sum(not c.finished for c in completions) / len(completions),
        "rollout/zero_std_groups": (grouped.max(-1).values == grouped.min(-1).values).float().sum().item(),
        "rollout/reward_errors": float(errors),
    }
