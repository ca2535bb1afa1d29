"""The pure pieces every objective is made of: surrogate, shaping, token weightings, KL, aggregation, counts.

Each piece is a function of tensors, tested on its own (``tests/test_loss.py``); an objective
(``lit_chord.objectives``) composes them into its loss. The pieces and where they come from:

    A     = (R − mean_group R) / (std_group R + ε) per prompt group            GRPO (DeepSeekMath), `group_advantages`
    ℓ_rl  = max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high)),  r = π_θ(y_t) / π_old(y_t); for A < 0 also capped at −A·c
                                                                              dual-clip PPO, `policy_loss`
    ℓ_off = −A·f(π_θ),  f(π) = π / (π + γ), unclipped, on expert traces inside a group      LUFFY, `shaped_loss`
    ℓ_sft = −w(p)·log p,  w detached: 1, φ(p) = p(1 − p), p, or 1 − p                 CHORD-φ and kin, `sft_loss`
    KL    = k1, k2 or k3 estimate of KL(π_θ ‖ π_ref) per token                                         `kl_penalty`
    w_tis = min(π_old(y_t) / π_engine(y_t), cap), the sampler/trainer mismatch       truncated IS, `importance_weights`

``aggregate`` turns per-token values into a term with the step's global counts (``Normalizers``, summed over
micro-batches and ranks by the caller), so that micro-batch losses add up to the full-batch loss whatever the
micro-batching: token-mean, seq-mean-token-mean, seq-mean-token-sum and seq-mean-token-sum-norm, verl's modes.
LUFFY's shaping (Yan et al., arXiv 2504.14945): a trace's tokens were not sampled by the policy; taking their
behaviour probability as 1 the ratio would be π_θ itself, and f's gradient π·γ / (π + γ)²·∇log π is largest for
tokens the policy finds unlikely, where a plain π would vanish. The log-probabilities come from
``lit_chord.logprobs.token_logprobs``, which never materializes the logits.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
TokenWeighting = Literal["none", "phi", "is", "low_p"]
KlEstimator = Literal["k1", "k2", "k3"]


def group_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO advantages A = (r − mean_g) / (std_g + eps), with the unbiased std of each group.

    A group of one has no statistics: as the reference (verl, Trinity-RFT) it takes mean 0 and std 1, so A = r
    and ``num_generations: 1`` keeps its RL signal (REINFORCE on the raw reward).

    Args:
        rewards: ``(N,)`` rewards laid out group after group (the completions of one prompt are contiguous).
        group_size: Completions per prompt; must divide N.
        scale_by_std: If False, return r − mean_g (Dr. GRPO).
        eps: Added to the std.

    Returns:
        ``(N,)`` float32; exactly 0 for a group of two or more whose rewards are all equal.
    """
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards has {rewards.numel()} elements, not a multiple of group_size={group_size}")
    if group_size == 1:
        return rewards.detach().float().reshape(-1).clone()  # mean 0, std 1
    groups = rewards.detach().float().reshape(-1, group_size)  # (G, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    constant = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)  # the mean may round: force 0
    return advantages.masked_fill(constant, 0.0).reshape(-1)


class PolicyLoss(NamedTuple):
    """Per-token outputs of `policy_loss`, all ``(B, T)`` and zero on masked tokens."""

    losses: Tensor  # dual-clip PPO loss
    clipped: Tensor  # bool: the clipped surrogate is active (pg2 > pg1)
    dual_clipped: Tensor  # bool: the dual clip −A·c is active (A < 0)
    ratio: Tensor  # π_θ / π_old


def policy_loss(
    logprobs: Tensor,  # (B, T) under the current policy
    old_logprobs: Tensor,  # (B, T) under the policy that sampled
    advantages: Tensor,  # (B,), broadcast over each row's tokens; (B, T) is accepted too
    mask: Tensor,  # (B, T), 1 on the tokens to train
    *,
    clip_low: float = 0.2,  # ε_low: the ratio is clipped below at 1 − ε_low
    clip_high: float = 0.2,  # ε_high: the ratio is clipped above at 1 + ε_high
    clip_ratio_c: float = 3.0,  # dual clip: for A < 0 the loss is capped at −A·c
    off_policy: Tensor | None = None,  # (B,) bool: expert traces in the groups (LUFFY), scored by `shaped_loss`
    off_policy_gamma: float = 0.1,  # γ of LUFFY's shaping f(π) = π / (π + γ)
) -> PolicyLoss:
    """Dual-clip PPO loss per token (the GRPO surrogate); on ``off_policy`` rows LUFFY's shaped, unclipped loss."""
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (B, 1)
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20.0, 20.0))  # r = π_θ / π_old
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(pg1, pg2)  # pessimistic bound of PPO
    pg3 = -adv * clip_ratio_c
    losses = torch.where(adv < 0, torch.minimum(clipped, pg3), clipped)  # dual clip
    keep = mask.bool()
    on_policy = keep
    if off_policy is not None:
        expert = off_policy.bool().unsqueeze(-1)  # (B, 1)
        losses = torch.where(expert, shaped_loss(logprobs, adv, off_policy_gamma), losses)
        on_policy = keep & ~expert  # the clip statistics and the ratio concern sampled tokens only
    zero = torch.zeros((), dtype=losses.dtype, device=losses.device)
    dual_clipped = (adv < 0) & (clipped > pg3) & on_policy
    return PolicyLoss(
        torch.where(keep, losses, zero),
        (pg2 > pg1) & on_policy,
        dual_clipped,
        torch.where(on_policy, ratio.detach(), zero),
    )


def shaped_loss(logprobs: Tensor, advantages: Tensor, gamma: float = 0.1) -> Tensor:
    """LUFFY's policy shaping on expert-trace tokens ``(B, T)``: −A·f(π_θ), f(π) = π / (π + γ), no clipping.

    ``advantages`` is ``(B, 1)`` or ``(B, T)``. The gradient is −A·γ·π / (π + γ)²·∇log π (LUFFY's "policy
    shaping", arXiv 2504.14945).
    """
    probs = logprobs.exp()
    return -advantages * probs / (probs + gamma)


def phi(probs: Tensor) -> Tensor:
    """CHORD-φ token weight φ(p) = p(1 − p): largest at p = 0.5, zero where the policy is certain either way."""
    return probs * (1.0 - probs)


def sft_loss(logprobs: Tensor, weighting: TokenWeighting = "phi") -> Tensor:
    """Per-token SFT loss −w·log p ``(B, T)`` with a detached weight w.

    ``"none"``: w = 1 (plain SFT, CHORD-μ); ``"phi"``: w = φ(p) (CHORD-φ); ``"is"``: w = p (the paper's IS ablation);
    ``"low_p"``: w = 1 − p, for base models: CHORD's author found that weighting low-probability tokens up works
    better there than φ, which was designed on instruct models (Trinity-RFT issue #425; the form 1 − p is ours, the
    issue gives none). Its gradient −(1 − p)·∇log p fades only where the policy already agrees with the expert.

    The weight is detached on purpose, as in the reference (``(p·(1 − p)).detach()``): the gradient is then
    −φ(p)·∇log p, a reweighted SFT gradient. Letting the gradient flow through φ (as another port does) would add
    −log p·φ'(p)·∇p, a term that, for p < 0.5, pushes the token's probability further down. ``test_loss.py`` pins it.
    """
    if weighting == "none":
        return -logprobs
    probs = logprobs.detach().exp()
    if weighting == "phi":
        return -logprobs * phi(probs)  # ∇ = −φ(p)·∇log p
    if weighting == "is":
        return -logprobs * probs  # ∇ = −p·∇log p = −∇p
    if weighting == "low_p":
        return -logprobs * (1.0 - probs)  # ∇ = −(1 − p)·∇log p
    raise ValueError(f"unknown sft weighting {weighting!r}")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KlEstimator = "k2") -> Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate ``(B, T)``: k1 = log r, k2 = ½(log r)², k3 = 1/r + log r − 1."""
    log_ratio = logprobs - ref_logprobs  # log r
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0  # exp(ref − logp) − (ref − logp) − 1
    raise ValueError(f"unknown KL estimator {estimator!r}")


def importance_weights(old_logprobs: Tensor, engine_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling weights ``(B, T)``: min(exp(old − engine), cap) per token, 1 where the engine
    reported no log-probability (NaN). ``old_logprobs`` are the trainer's, of the policy that sampled (detached
    here); ``engine_logprobs`` the rollout engine's of the same tokens, same shape: two copies of one policy."""
    ratio = torch.exp(old_logprobs.detach().float() - torch.nan_to_num(engine_logprobs, nan=0.0))
    return torch.where(engine_logprobs.isnan(), torch.ones_like(ratio), ratio.clamp(max=cap))


@dataclass(frozen=True)
class Normalizers:
    """Counts of each term over one whole optimizer step (all micro-batches and ranks).

    ``*_seqs`` counts the rows with at least one loss token, ``*_rows`` every row of the kind, loss tokens or not
    (a masked truncated rollout still counts, as in the reference's sample counts and verl's batch means).
    ``trace_*`` count the expert traces inside rollout groups (LUFFY's, SRFT's), which the ``rl_*`` counts include.
    """

    rl_tokens: float
    rl_seqs: float
    sft_tokens: float
    sft_seqs: float
    rl_rows: float
    sft_rows: float
    trace_tokens: float = 0.0
    trace_seqs: float = 0.0

    def __add__(self, other: Normalizers) -> Normalizers:
        return Normalizers(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def as_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """``(8,)`` float64 in field order, e.g. for ``all_reduce``."""
        return torch.tensor(astuple(self), dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, t: Tensor) -> Normalizers:
        """Inverse of `as_tensor`."""
        return cls(*(float(x) for x in t.tolist()))


def count_normalizers(mask: Tensor, is_expert: Tensor, off_policy: Tensor | None = None) -> Normalizers:
    """Counts of one micro-batch from ``mask`` ``(B, T)``, ``is_expert`` ``(B,)`` and ``off_policy`` ``(B,)``."""
    row_tokens = mask.detach().float().sum(dim=-1)  # (B,)
    rl, sft = row_tokens[~is_expert.bool()], row_tokens[is_expert.bool()]
    traces = row_tokens[off_policy.bool()] if off_policy is not None else row_tokens[:0]
    counts = torch.stack([rl.sum(), (rl > 0).sum(), sft.sum(), (sft > 0).sum(), traces.sum(), (traces > 0).sum()])
    rl_tokens, rl_seqs, sft_tokens, sft_seqs, trace_tokens, trace_seqs = counts.tolist()
    return Normalizers(
        rl_tokens, rl_seqs, sft_tokens, sft_seqs, float(len(rl)), float(len(sft)), trace_tokens, trace_seqs
    )


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: LossAgg,
    tokens: float,
    seqs: float,
    horizon: int | None = None,
    rows: float | None = None,
) -> Tensor:
    """Reduce per-token ``values`` ``(B, T)`` over ``mask`` with global counts, so micro-batch results add up.

    token-mean: Σv / tokens; seq-mean-token-mean: Σ_rows (Σ_row v / n_row) / seqs (the rows with tokens);
    seq-mean-token-sum: Σv / rows; seq-mean-token-sum-norm: Σv / (rows·horizon), horizon a constant (default T;
    pass max_new_tokens; Dr. GRPO). ``rows`` counts every row of the term, loss tokens or not (default: ``seqs``):
    the two token-sum modes weigh each token by a constant of the step, which must not move with how many rows
    were masked (truncated rollouts under ``mask_truncated_completions``). A zero denominator gives 0 (and a zero
    gradient), never NaN.
    """
    keep = mask.bool()
    masked = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))  # no NaN leaks
    rows = seqs if rows is None else rows
    if mode == "token-mean":
        total, denom = masked.sum(), tokens
    elif mode == "seq-mean-token-mean":
        total, denom = (masked.sum(dim=-1) / keep.sum(dim=-1).clamp(min=1)).sum(), seqs
    elif mode == "seq-mean-token-sum":
        total, denom = masked.sum(), rows
    elif mode == "seq-mean-token-sum-norm":
        total, denom = masked.sum(), rows * (mask.shape[-1] if horizon is None else horizon)
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}")
    return total / denom if denom > 0 else total * 0.0
