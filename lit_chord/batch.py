"""The data that flows through one optimizer step.

``StepBatch`` is what the datamodule yields per step: the prompts to roll out (already tokenized with the chat
template) and the expert demonstrations. The rollout callback fills in ``rollouts`` and ``sampling`` (how they were
drawn); the datamodule's collate turns expert rows and rollout rows into one right-padded ``TrainTensors`` that the
module slices into micro-batches.

``SamplingConfig`` lives here, not with the engines that read it (``lit_chord.engines`` re-exports it): the step
needs it too, and this room imports nothing of ours above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lit_chord.errors import ConfigError


@dataclass  # not frozen: a StepBatch holding one goes through Lightning's batch transfer, which rebuilds dataclasses
class SamplingConfig:
    """How to sample completions. ``seed`` makes a generation call reproducible."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int | None = None


@dataclass
class Prompt:
    """One RL prompt: token ids after the chat template, and the reference answer for the reward."""

    prompt_ids: list[int]
    answer: str
    text: str = ""
    expert_ids: list[int] | None = None  # LUFFY: the expert's response to this prompt, a member of its group


@dataclass
class Sequence:
    """One training row: a prompt and a response; the loss covers the response tokens only."""

    prompt_ids: list[int]
    response_ids: list[int]
    is_expert: bool
    advantage: float = 0.0
    loss_on_response: bool = True  # False for masked truncated rollouts (they keep their reward, not their tokens)
    engine_logprobs: list[float] | None = None  # the rollout engine's logprobs of response_ids, when reported
    off_policy: bool = False  # an expert trace inside a rollout group (LUFFY): a rollout row not sampled by the policy


@dataclass
class TrainTensors:
    """Right-padded rows of one step. Shapes: ``(B, T)`` for token tensors, ``(B,)`` for row tensors.

    ``loss_mask[b, t]`` is 1 where ``input_ids[b, t + 1]`` is a response token, i.e. it is aligned with the
    logits at position ``t`` that predict the next token, so ``targets = input_ids[:, 1:]`` pairs with
    ``loss_mask[:, :-1]``.
    """

    input_ids: Tensor  # (B, T) long
    attention_mask: Tensor  # (B, T) long
    loss_mask: Tensor  # (B, T) float, aligned with the logits that predict the next token
    is_expert: Tensor  # (B,) bool
    advantages: Tensor  # (B,) float
    engine_logprobs: Tensor | None = None  # (B, T) float, aligned like loss_mask; NaN where the engine gave none
    off_policy: Tensor | None = None  # (B,) bool: rollout rows that are expert traces (LUFFY); None: none are
    old_logprobs: Tensor | None = None  # (B, T) float, aligned like loss_mask: the policy's before the step's updates
    row_ids: Tensor | None = None  # (B,) long: where each row sits in the step's rows, to write per-row results back

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, keep: Tensor) -> TrainTensors:
        """The rows where ``keep`` ``(B,)`` is true."""
        tensors: dict[str, Any] = {k: None if v is None else v[keep] for k, v in self.__dict__.items()}
        return TrainTensors(**tensors)

    def take(self, rows: Tensor | slice) -> TrainTensors:
        """The rows at ``rows`` (indices or a slice), without the trailing columns that are padding in all of them."""
        width = int(self.attention_mask[rows].sum(-1).max())
        return TrainTensors(
            input_ids=self.input_ids[rows, :width],
            attention_mask=self.attention_mask[rows, :width],
            loss_mask=self.loss_mask[rows, :width],
            is_expert=self.is_expert[rows],
            advantages=self.advantages[rows],
            engine_logprobs=None if self.engine_logprobs is None else self.engine_logprobs[rows, :width],
            off_policy=None if self.off_policy is None else self.off_policy[rows],
            old_logprobs=None if self.old_logprobs is None else self.old_logprobs[rows, :width],
            row_ids=None if self.row_ids is None else self.row_ids[rows],
        )

    def micro_batches(self, size: int) -> list[TrainTensors]:
        """Split rows into chunks of ``size`` in arrival order and trim each chunk's trailing padding."""
        return [self.take(slice(start, start + size)) for start in range(0, len(self), size)]

    def to(self, device: torch.device | str) -> TrainTensors:
        tensors: dict[str, Any] = {k: None if v is None else v.to(device) for k, v in self.__dict__.items()}
        return TrainTensors(**tensors)


def check_mini_batches(count: int, groups_per_rank: int) -> None:
    """Refuse more mini-batches than a rank has prompt groups: an update without rollouts would still move AdamW's
    moments. ``count``: ``model.ppo_mini_batches`` (1: the whole step as it is, always fine)."""
    if count > 1 and groups_per_rank < count:
        raise ConfigError(
            f"model.ppo_mini_batches={count} needs at least as many prompt groups per rank; "
            f"this rank has {groups_per_rank} (data.prompts_per_step / world size)"
        )


def split_mini_batches(rows: TrainTensors, count: int, group_size: int) -> list[TrainTensors]:
    """The step's rows in ``count`` mini-batches, one optimizer update each (PPO's mini-batches).

    Prompt groups stay whole (their advantages were computed together) and are dealt out in turn: the k-th group of
    rollout rows goes to mini-batch k mod ``count``, and so does the k-th expert row. Because ranks hold contiguous
    shares of the step's draw, a rank whose share of groups (and of expert rows) is a multiple of ``count`` puts
    into mini-batch j exactly the rows one rank would: 2 ranks take the same updates as 1. Fewer prompt groups than
    ``count`` are refused (``check_mini_batches``).
    """
    check_mini_batches(count, int((~rows.is_expert).sum()) // group_size)
    is_expert = rows.is_expert
    position = torch.zeros(len(rows), dtype=torch.long, device=is_expert.device)
    position[~is_expert] = torch.arange(int((~is_expert).sum()), device=is_expert.device) // group_size
    position[is_expert] = torch.arange(int(is_expert.sum()), device=is_expert.device)
    return [rows.select(position % count == j) for j in range(count)]


def pad_sequences(sequences: list[Sequence], pad_id: int) -> TrainTensors:
    """Right-pad rows into tensors; see ``TrainTensors`` for the loss-mask alignment."""
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.float32)
    engine_logprobs = None
    for row, seq in enumerate(sequences):
        ids = seq.prompt_ids + seq.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        if seq.loss_on_response:
            # logits at position t predict token t + 1: response tokens sit at [P, P + R), so mask [P - 1, P + R - 1).
            loss_mask[row, len(seq.prompt_ids) - 1 : len(ids) - 1] = 1.0
        if seq.engine_logprobs is not None:
            engine_logprobs = torch.full((n, width), float("nan")) if engine_logprobs is None else engine_logprobs
            engine_logprobs[row, len(seq.prompt_ids) - 1 : len(ids) - 1] = torch.tensor(seq.engine_logprobs)
    return TrainTensors(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        is_expert=torch.tensor([s.is_expert for s in sequences], dtype=torch.bool),
        advantages=torch.tensor([s.advantage for s in sequences], dtype=torch.float32),
        engine_logprobs=engine_logprobs,
        off_policy=torch.tensor([s.off_policy for s in sequences]) if any(s.off_policy for s in sequences) else None,
    )


@dataclass
class StepBatch:
    """Everything one optimizer step needs on one rank."""

    step: int  # 0-based optimizer step this batch was drawn for
    prompts: list[Prompt]
    expert: list[Sequence]
    num_generations: int
    rollouts: list[Sequence] = field(default_factory=list)
    train: TrainTensors | None = None  # set by the rollout callback through the datamodule's collate
    # Set by the rollout callback: how the rollouts were drawn. The step scales its logits by the same temperature,
    # and max_new_tokens is the horizon of seq-mean-token-sum-norm (a constant of the run, the same on every rank).
    sampling: SamplingConfig | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # rollout/*, all ranks, as the callback logged them


@dataclass(frozen=True)
class StepContext:
    """What every update of one step shares: its 1-based number (the objective's schedules follow it), the sampling
    temperature, the horizon of seq-mean-token-sum-norm, and the step's rows (whose first row pads the passes of a
    rank with fewer)."""

    number: int
    temperature: float
    horizon: int
    rows: TrainTensors


@dataclass
class ValResult:
    """How the policy answered one held-out prompt: greedy, and ``n`` samples. Correctness is the reward's
    ``accuracy`` (the right answer, whatever the format); the format is ``format_ok``, on its own."""

    greedy_correct: float
    greedy_length: int
    sample_correct: list[float] = field(default_factory=list)
    completion: str = ""  # the greedy completion, decoded
    greedy_reward: float = 0.0
    pass_at_k: float | None = None  # unbiased pass@k from the samples (None without samples)
    format_ok: float | None = None  # the greedy completion is well formed (None: the reward judges no format)


@dataclass
class ValBatch:
    """Held-out prompts; the rollout callback fills ``results`` before ``validation_step``.

    Under several ranks every rank runs as many batches of the same sizes (generation and metric syncs are
    collectives), so a rank with a smaller share of the set fills its last rows with a repeated prompt that is
    generated but not ``counted``. ``indices`` are the prompts' positions in their set: they seed the samples.
    """

    prompts: list[Prompt]
    results: list[ValResult] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # position in the set per row (default: 0, 1, ...)
    counted: list[bool] = field(default_factory=list)  # False for padding rows (default: all counted)
    num_samples: int = 0  # samples per prompt, and the k of pass@k: the set's protocol (``lit_chord.protocol``)
    pass_k: int = 0

    def __post_init__(self) -> None:
        self.indices = self.indices or list(range(len(self.prompts)))
        self.counted = self.counted or [True] * len(self.prompts)
