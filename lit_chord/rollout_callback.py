"""``RolloutCallback``: generate, score and hand rollouts to the step that uses them.

Generation happens in ``on_train_batch_start``, after Lightning has fetched the step's prompts and before
``training_step``, so rollouts always come from the weights of the step that trains on them (a buffer filled
for the dataloader would be one step stale because Lightning prefetches a batch). Before generating, the
engine receives the policy's weights if an optimizer step happened since the last sync; the last synced step
starts at -1, so a run resumed from a checkpoint pushes the restored weights before its first rollout.

Generation is seeded by ``(seed, step, rank)``, so a resumed run samples what an uninterrupted one would. The step
learns how its rollouts were drawn from ``batch.sampling`` (the temperature its logits are scaled by, the horizon of
seq-mean-token-sum-norm); the module seeds its own randomness (dropout).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from typing_extensions import override

from lit_chord.batch import Sequence, StepBatch, ValBatch, ValResult
from lit_chord.chat import eos_ids
from lit_chord.datamodule import ChordDataModule
from lit_chord.engines import Completion, Engine, SamplingConfig
from lit_chord.loss import group_advantages
from lit_chord.metrics import RolloutSums, pass_at_k, step_rollout_metrics
from lit_chord.protocol import SetProtocol, check_per_set, protocols
from lit_chord.rewards import Reward, as_reward, math_boxed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lit_chord.module import ChordModule

log = logging.getLogger(__name__)
RewardFn = Callable[[str, str], "Reward | float"]


@dataclass
class Scores:
    """The rewards of a batch of completions and their components, ``(N,)`` each, laid out group after group."""

    rewards: Tensor  # the scalars the advantages are computed from
    accuracy: Tensor  # 1.0 where the answer is right
    format_ok: Tensor  # 1.0 where the response is well formed; NaN where the reward reports no format
    errors: int  # completions whose reward function raised or returned a non-number

    def select(self, keep: Tensor) -> Scores:
        """The completions where ``keep`` ``(N,)`` is true (errors are kept as counted)."""
        return Scores(self.rewards[keep], self.accuracy[keep], self.format_ok[keep], self.errors)


class RolloutCallback(Callback):
    def __init__(
        self,
        engine: Engine | None = None,
        reward_fn: RewardFn = math_boxed,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        mask_truncated_completions: bool = False,
        scale_advantages_by_std: bool = True,
        val_temperature: float = 1.0,
        val_num_samples: int | dict[str, int] = 4,
        val_pass_k: int | dict[str, int] | None = None,
        seed: int = 42,
    ) -> None:
        """The engine, the reward and how rollouts are sampled.

        Args:
            engine: Rollout engine (``class_path``): ``lit_chord.engines.transformers_engine.TransformersEngine``
                (default; CPU-friendly) or ``lit_chord.engines.vllm_engine.VLLMEngine``.
            reward_fn: ``reward(completion, answer) -> Reward | float`` (``lit_chord.rewards``), as an import path:
                ``lit_chord.rewards.math_boxed`` (default, the reference code's), ``lit_chord.rewards.paper_math``
                (the paper's, with a length penalty) or ``lit_chord.rewards.exact_match``. One that takes a
                ``truncated`` keyword is told whether the completion hit ``max_new_tokens``.
            temperature: Sampling temperature of rollouts; the trainer scales its logits by the same value.
            top_p: Nucleus sampling threshold.
            max_new_tokens: Longest completion; a longer one is cut there (truncated), keeps its reward and counts in
                its group's statistics either way.
            mask_truncated_completions: Leave truncated completions' tokens out of the loss (TRL's name; DAPO's
                "overlong filtering"; Trinity-RFT 0.6.0's math workflow). False (default) trains them with their
                advantage, as the paper-era reference workflow, verl, TRL's default and LUFFY's script do: a reward
                that punishes running out of tokens (``paper_math``'s −1) then reaches the tokens that earned it.
                With masking it only shifts the group's mean and std.
            scale_advantages_by_std: GRPO's (r − mean)/std; False gives Dr. GRPO's r − mean.
            val_temperature: Temperature of the ``n`` validation samples (greedy is always measured too).
            val_num_samples: ``n`` samples per held-out prompt, logged as ``val/<set>/avg@<n>`` and
                ``val/<set>/pass@<k>`` (0: greedy only). One number for every set, or a mapping set name -> ``n``
                (``lit_chord.protocol``; a set it leaves out is scored greedily only), e.g. the paper's
                ``{aime24: 32, aime25: 32, amc: 8, mmlu_pro: 0}``.
            val_pass_k: ``k`` of the unbiased pass@k estimate from the ``n`` samples, 1 <= k <= n (None: k = n);
                a number or a mapping set name -> ``k``.
            seed: Base seed; each generation call uses ``(seed, step, rank)``.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for rollouts, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        check_per_set(val_num_samples, "val_num_samples", 0)
        check_per_set(val_pass_k, "val_pass_k", 1)
        if isinstance(val_num_samples, int) and isinstance(val_pass_k, int) and val_pass_k > val_num_samples:
            raise ValueError(f"val_pass_k must lie in [1, val_num_samples={val_num_samples}], got {val_pass_k}")
        if engine is None:
            from lit_chord.engines.transformers_engine import TransformersEngine

            engine = TransformersEngine()
        self.engine = engine
        self.reward_fn = reward_fn
        # A reward that judges running out of tokens (``rewards.paper_math``) declares a ``truncated`` parameter.
        self.reward_takes_truncated = "truncated" in inspect.signature(reward_fn).parameters
        self.sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self.mask_truncated_completions = mask_truncated_completions
        self.scale_advantages_by_std = scale_advantages_by_std
        self.val_temperature, self.val_num_samples, self.val_pass_k = val_temperature, val_num_samples, val_pass_k
        self.protocols: dict[str, SetProtocol] = {}  # held-out set name -> its n and k, set by setup
        self.seed = seed
        self.last_synced_step = -1
        self.tokenizer: PreTrainedTokenizerBase | None = None  # the datamodule's, set by setup
        self.stop_ids: list[int] | None = None  # the datamodule's end-of-turn ids, set by setup
        self.attached_to: nn.Module | None = None

    # ----- lifecycle --------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = ChordDataModule.of(trainer)
        self.tokenizer = datamodule.tokenizer
        self.stop_ids = datamodule.stop_token_ids
        names = datamodule.val_set_names or ["heldout"]
        self.protocols = protocols(self.val_num_samples, self.val_pass_k, names)

    def attach(self, pl_module: ChordModule) -> None:
        """Bind the engine to the policy once it exists (after ``configure_model`` and device placement)."""
        if self.attached_to is pl_module.policy:
            return
        tokenizer = self.tokenizer
        assert tokenizer is not None and pl_module.policy is not None, "setup and configure_model have not run"
        self.engine.attach(pl_module.policy, self.stop_token_ids(pl_module), tokenizer.pad_token_id)
        pl_module.engine_attached(getattr(self.engine, "weight_dtype", None))  # None: no copy of the weights
        self.attached_to = pl_module.policy

    def stop_token_ids(self, pl_module: ChordModule) -> list[int]:
        """Where rollouts stop: the datamodule's end-of-turn ids (``lit_chord.chat``, the ones expert responses are
        cut at) and the policy's ``generation_config.eos_token_id``."""
        assert self.stop_ids is not None and pl_module.policy is not None, "setup and configure_model have not run"
        eos = getattr(pl_module.policy.generation_config, "eos_token_id", None)
        return sorted(set(self.stop_ids) | eos_ids(eos))

    def sync_weights(self, trainer: Trainer, pl_module: ChordModule) -> float:
        """Push the policy's weights into the engine if the optimizer stepped since the last push."""
        self.attach(pl_module)
        if trainer.global_step == self.last_synced_step:
            return 0.0
        start = time.perf_counter()
        self.engine.load_weights(pl_module.full_parameters())
        self.last_synced_step = trainer.global_step
        return time.perf_counter() - start

    @override
    def state_dict(self) -> dict:
        return {"seed": self.seed}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = state_dict["seed"]
        self.last_synced_step = -1  # the engine still holds the initial weights: push the restored ones

    # ----- rollouts ---------------------------------------------------------------------------------------------
    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: StepBatch, batch_idx: int
    ) -> None:
        module = cast("ChordModule", pl_module)
        seed = self.seed + 1_000_003 * batch.step + 7919 * trainer.global_rank
        batch.sampling = dataclasses.replace(self.sampling, seed=seed)  # the step scales its logits alike
        if module.objective.needs.rollouts:  # an SFT objective trains on the expert stream alone
            self.roll_out(trainer, module, batch, batch.sampling)
        batch.train = ChordDataModule.of(trainer).collate_rollouts(batch)

    def roll_out(self, trainer: Trainer, module: ChordModule, batch: StepBatch, sampling: SamplingConfig) -> None:
        """Generate the step's groups, score them, give them their advantages (``batch.rollouts``) and log them."""
        sync_seconds = self.sync_weights(trainer, module)
        start = time.perf_counter()
        traces = [p.expert_ids for p in batch.prompts]
        mixed = any(trace is not None for trace in traces)  # LUFFY: the last member of each group is the expert's
        sampled = batch.num_generations - int(mixed)
        groups = self.generate(module, [p.prompt_ids for p in batch.prompts], sampled, sampling)
        if mixed:
            groups = [
                [*group, Completion(list(trace or []), True)] for group, trace in zip(groups, traces, strict=True)
            ]
        gen_seconds = time.perf_counter() - start
        scores = self.score(groups, [p.answer for p in batch.prompts])
        advantages = group_advantages(scores.rewards, batch.num_generations, scale_by_std=self.scale_advantages_by_std)
        completions = [c for group in groups for c in group]
        prompts = [p for p in batch.prompts for _ in range(batch.num_generations)]
        batch.rollouts = [
            Sequence(
                p.prompt_ids,
                c.token_ids,
                is_expert=False,
                advantage=float(a),
                loss_on_response=c.finished or not self.mask_truncated_completions,
                engine_logprobs=c.logprobs,
                off_policy=mixed and index % batch.num_generations == sampled,
            )
            for index, (p, c, a) in enumerate(zip(prompts, completions, advantages.tolist(), strict=True))
        ]
        if mixed:  # the rollout metrics describe the policy's samples; the traces' rewards get their own
            on_policy = torch.arange(len(completions)) % batch.num_generations < sampled
            own = [c for c, keep in zip(completions, on_policy.tolist(), strict=True) if keep]
            sums = rollout_sums(scores.select(on_policy), own, sampled)
            sums.expert_traces = float((~on_policy).sum())
            sums.expert_trace_reward = scores.rewards[~on_policy].sum().item()
        else:
            sums = rollout_sums(scores, completions, batch.num_generations)
        timings = {"gen_seconds": gen_seconds, "sync_seconds": sync_seconds}
        batch.metrics = self.log_rollout_metrics(trainer, module, sums, timings)

    def log_rollout_metrics(
        self, trainer: Trainer, pl_module: ChordModule, sums: RolloutSums, timings: dict[str, float]
    ) -> dict[str, float]:
        """Log ``rollout/*`` over the step's rollouts on all ranks, and return them.

        One collective per step: every rank's sums and timings are gathered (a small float64 vector each), then
        added up, or for timings maxed (``metrics.step_rollout_metrics``). Ranks already wait for each other at the
        step's first collective (the token counts), so this adds no waiting, only a few bytes.
        """
        local = torch.cat([sums.as_tensor(), torch.tensor(list(timings.values()), dtype=torch.float64)])
        gathered = trainer.strategy.all_gather(local.to(pl_module.device))  # (world, K); one device: (K,)
        metrics = step_rollout_metrics(gathered.reshape(-1, len(local)).cpu(), list(timings))
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("reward", metrics["rollout/reward_mean"], prog_bar=True, logger=False, batch_size=1)
        return metrics

    def generate(
        self, pl_module: ChordModule, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig
    ) -> list[list[Completion]]:
        with pl_module.gathered() if self.engine.uses_live_policy else nullcontext():
            return self.engine.generate(prompt_ids, n, sampling)

    def score(self, groups: list[list[Completion]], answers: list[str]) -> Scores:
        """Score every completion, group after group; a reward function that raises or returns a non-number scores
        0 (reward, accuracy and format) and is counted."""
        rows, errors, first_error = [], 0, None
        for group, answer in zip(groups, answers, strict=True):
            for completion in group:
                try:
                    text = self.decode(completion.token_ids)
                    extra = {"truncated": not completion.finished} if self.reward_takes_truncated else {}
                    reward = as_reward(self.reward_fn(text, answer, **extra))
                except Exception as err:  # a bad reward must not kill a long run; it is logged and counted
                    reward, errors, first_error = Reward(0.0, 0.0, 0.0), errors + 1, first_error or err
                rows.append(reward)
        if errors:
            log.warning(
                "reward_fn failed on %d of %d completions (scored 0); first: %r", errors, len(rows), first_error
            )
        return Scores(
            rewards=torch.tensor([r.reward for r in rows], dtype=torch.float32),
            accuracy=torch.tensor([r.accuracy for r in rows], dtype=torch.float32),
            format_ok=torch.tensor([math.nan if r.format_ok is None else r.format_ok for r in rows]),
            errors=errors,
        )

    def decode(self, token_ids: list[int]) -> str:
        """A completion's text, without special tokens."""
        assert self.tokenizer is not None, "setup has not run"
        return cast(str, self.tokenizer.decode(token_ids, skip_special_tokens=True))  # one sequence: one string

    # ----- validation -------------------------------------------------------------------------------------------
    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: ValBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        module = cast("ChordModule", pl_module)
        self.sync_weights(trainer, module)
        prompt_ids = [p.prompt_ids for p in batch.prompts]
        answers = [p.answer for p in batch.prompts]
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=self.sampling.max_new_tokens)
        greedy_groups = self.generate(module, prompt_ids, 1, greedy)
        greedy_scores = self.score(greedy_groups, answers)
        sampled: list[list[float]] = [[] for _ in prompt_ids]
        protocol = list(self.protocols.values())[dataloader_idx]
        batch.num_samples, batch.pass_k = protocol.num_samples, protocol.pass_k
        if protocol.num_samples:
            sampling = SamplingConfig(
                temperature=self.val_temperature,
                top_p=self.sampling.top_p,
                max_new_tokens=self.sampling.max_new_tokens,
                # A pure function of (seed, set, index of the batch's first prompt): an engine that seeds the call's
                # i-th prompt from seed + i·n (VLLMEngine) samples every prompt alike, however ranks split the set.
                seed=self.seed + 1_000_003 * dataloader_idx + protocol.num_samples * batch.indices[0],
            )
            groups = self.generate(module, prompt_ids, protocol.num_samples, sampling)
            sampled = self.score(groups, answers).accuracy.view(len(prompt_ids), -1).tolist()
        batch.results = [
            ValResult(
                greedy_correct=correct,
                greedy_length=len(group[0].token_ids),
                sample_correct=samples,
                completion=self.decode(group[0].token_ids),
                greedy_reward=reward,
                pass_at_k=pass_at_k(len(samples), int(sum(samples)), protocol.pass_k) if samples else None,
                format_ok=None if math.isnan(form) else form,
            )
            for reward, correct, form, group, samples in zip(
                greedy_scores.rewards.tolist(),
                greedy_scores.accuracy.tolist(),
                greedy_scores.format_ok.tolist(),
                greedy_groups,
                sampled,
                strict=True,
            )
        ]


def rollout_sums(scores: Scores, completions: list[Completion], group_size: int) -> RolloutSums:
    """One rank's rollouts as sums and counts (``metrics.RolloutSums``). ``accuracy`` counts right answers only,
    whatever the format; ``format_ok`` counts the well-formed among the completions whose format the reward judged."""
    rewards = scores.rewards.double()
    judged = scores.format_ok[~scores.format_ok.isnan()]
    # groups of two or more with equal rewards: advantage 0 (a group of one has A = r, see group_advantages)
    grouped = rewards.view(-1, group_size)
    constant = (grouped.max(-1).values == grouped.min(-1).values).sum().item() if group_size > 1 else 0
    return RolloutSums(
        completions=float(len(completions)),
        reward=rewards.sum().item(),
        reward_squared=rewards.square().sum().item(),
        accuracy=scores.accuracy.sum().item(),
        format_judged=float(len(judged)),
        format_ok=judged.sum().item(),
        response_tokens=float(sum(len(c.token_ids) for c in completions)),
        truncated=float(sum(not c.finished for c in completions)),
        zero_std_groups=float(constant),
        reward_errors=float(scores.errors),
    )
