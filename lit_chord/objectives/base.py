"""What an objective is: what it asks of the data and the policy (``Needs``), and the loss of a micro-batch.

Why a class per algorithm: an algorithm used to be a flag read by the datamodule, the rollout callback, the loss
and the module. An objective says what it needs once, and the rooms ask it: the datamodule draws an SFT stream
only for an objective that trains on one, loads each prompt's expert trace only for one that puts traces in its
groups; the callback generates only for one that learns from rollouts; the module keeps a frozen reference only
for one with a KL penalty. The loss itself is the objective's, composed of ``lit_chord.loss``'s pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lit_chord.loss import Normalizers


@dataclass(frozen=True)
class Needs:
    """What an objective asks of the data, the rollouts and the policy."""

    sft_stream: bool = False  # expert demonstrations drawn each step from ``data.expert_data``, rows of their own
    traces_in_groups: bool = False  # each RL prompt's expert response (``data.expert_response_key``) in its group
    rollouts: bool = True  # on-policy samples of the step's prompts (False: the step generates nothing)
    reference: bool = False  # the initial policy, frozen, scoring every row (a KL penalty)


@dataclass
class LossInputs:
    """One micro-batch as an objective sees it. Token tensors are ``(B, T)``, aligned with the logits that predict
    the next token (``TrainTensors.loss_mask[:, :-1]``); row tensors ``(B,)``."""

    logprobs: Tensor  # the policy's log-probabilities of the rows' tokens, with gradient
    old_logprobs: Tensor  # the sampling policy's (detached): the PPO ratio's denominator
    entropy: Tensor  # the policy's entropy at each position (with gradient)
    mask: Tensor  # 1 on the response tokens to train
    is_expert: Tensor  # bool: rows of the SFT stream
    advantages: Tensor  # float: the group advantage of rollout rows (0 for expert rows)
    normalizers: Normalizers  # the counts of the whole update (all micro-batches and ranks)
    step: int  # the 1-based optimizer step being taken (schedules follow it)
    horizon: int  # the rollouts' max_new_tokens: the constant of seq-mean-token-sum-norm
    off_policy: Tensor | None = None  # bool: expert traces inside rollout groups; None: there are none
    ref_logprobs: Tensor | None = None  # the reference policy's (``Needs.reference``), detached
    rollout_weights: Tensor | None = None  # detached per-token weights of the policy loss (TIS), None: 1

    @property
    def rl_mask(self) -> Tensor:
        """The rollout rows' trained tokens (expert traces inside groups included)."""
        return self.mask.bool() & ~self.is_expert.bool().unsqueeze(-1)

    @property
    def sft_mask(self) -> Tensor:
        """The SFT stream's trained tokens."""
        return self.mask.bool() & self.is_expert.bool().unsqueeze(-1)


@dataclass
class LossOutput:
    """What an objective returns for a micro-batch."""

    loss: Tensor  # the scalar to back-propagate
    metrics: dict[str, Tensor]  # detached 0-dim tensors that add up over the micro-batches of an update (or a max:
    # ``ratio_max``); the same keys on every micro-batch and rank


class Objective:
    """An algorithm: its ``needs`` and its ``loss``. Subclasses take their hyperparameters as documented ``__init__``
    arguments, which are the config's schema (``model.objective.init_args``)."""

    @property
    def needs(self) -> Needs:
        """What the step must provide (default: rollouts only)."""
        return Needs()

    def loss(self, inputs: LossInputs) -> LossOutput:
        """The micro-batch's share of the update's loss, and its metrics."""
        raise NotImplementedError

    def schedule(self, step: int) -> dict[str, float]:
        """Values the objective follows at the 1-based ``step``, logged as ``train/<name>`` (CHORD: ``mu``)."""
        return {}

    def without_gradient(self, is_expert: Tensor, advantages: Tensor, off_policy: Tensor | None) -> Tensor:
        """``(B,)`` bool: rows whose loss has no gradient (they are scored for their metrics, not back-propagated);
        ``off_policy`` marks the expert traces inside groups (None: there are none)."""
        return is_expert & False

    def check_run(self, max_steps: int) -> list[str]:
        """Warnings about this objective in a run of ``max_steps`` (e.g. a schedule longer than the run)."""
        return []

    def describe(self) -> str:
        """One line for the run's summary."""
        return repr(self)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({settings})"

    def __eq__(self, other: object) -> bool:  # hyper-parameters compare by value (a resume checks them)
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(repr(self))


def as_config(objective: Objective) -> dict:
    """``objective`` as the config writes it: ``{"class_path": ..., "init_args": {...}}`` (how it is saved with the
    hyper-parameters and compared on resume)."""
    cls = type(objective)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(vars(objective))}
