"""The CHORD objective (Zhang et al., "On-Policy RL Meets Off-Policy Experts", arXiv 2508.11408).

One optimizer step mixes on-policy rollouts (GRPO) with expert demonstrations (SFT):

    L     = (1 − μ)·L_rl + μ·L_sft − c_ent·H + c_kl·KL            the paper's hybrid loss, as the reference applies
                                                                  the entropy bonus and KL penalty (outside 1 − μ)
    L_rl  = agg over rollout tokens of max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high)),  r = π_θ(y_t) / π_old(y_t)
            (dual clip: for A < 0 the token loss is also capped at −A·c, c = 3)
    L_sft = agg over expert tokens of −φ(p)·log p,  p = π_θ(y*_t),  φ(p) = p(1 − p) detached        CHORD-φ
    A     = (R − mean_group R) / (std_group R + ε) per prompt group, broadcast over tokens       GRPO

LUFFY (Yan et al., arXiv 2504.14945), the paper's main off-policy baseline, fits the same L_rl: a group may hold an
expert trace beside the rollouts (``Sequence.off_policy``), whose advantage comes from the mixed group. Its tokens
were not sampled by the policy; taking their behaviour probability as 1, the ratio would be π_θ itself, and LUFFY
shapes it: the token loss is −A·f(π_θ), f(π) = π / (π + γ), γ = 0.1, unclipped. f's gradient π·γ / (π + γ)²·∇log π
is largest for tokens the policy finds unlikely, where a plain π would vanish.
    μ     = linear warm-up 0 → μ_peak, half-cosine μ_peak → μ_valley, then μ_valley             CHORD-μ

Rollout rows enter only L_rl and the entropy bonus H (mean entropy of rollout tokens), expert rows only L_sft; the KL
penalty to the reference policy covers every response token, expert rows included. That is the reference's actor
(Trinity-RFT, verl): ``policy_loss = pg_loss − entropy_coef·entropy + kl_coef·kl``, with the CHORD mix as ``pg_loss``,
so neither regularizer is scaled by 1 − μ. Each term is normalized by its own token (or sequence) count, so L_rl and
L_sft both weigh 1 before mixing with 1 − μ and μ, however many expert rows a batch holds. Counts are global (summed
over micro-batches and ranks by the caller), so micro-batch losses add up to the full-batch loss. Semantics follow
the reference implementation (Trinity-RFT, algorithm `mix_chord`).
The log-probabilities come from `lit_chord.logprobs.token_logprobs`, which never materializes the logits.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
SftWeighting = Literal["none", "phi", "is"]
KlEstimator = Literal["k1", "k2", "k3"]


def mu_schedule(step: int, warmup_steps: int, decay_steps: int, peak: float, valley: float) -> float:
    """SFT weight μ at a 1-based optimizer step (CHORD-μ); ``warmup_steps = decay_steps = 0`` gives ``valley``."""
    if step < warmup_steps:
        return step / warmup_steps * peak  # linear warm-up from 0
    if step >= warmup_steps + decay_steps:
        return valley
    return (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps)) + valley


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


def sft_loss(logprobs: Tensor, weighting: SftWeighting = "phi") -> Tensor:
    """Per-token SFT loss −w·log p ``(B, T)`` with a detached weight w.

    ``"none"``: w = 1 (plain SFT, CHORD-μ); ``"phi"``: w = φ(p) (CHORD-φ); ``"is"``: w = p (the paper's IS ablation).

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


@dataclass(frozen=True)
class Normalizers:
    """Counts of each term over one whole optimizer step (all micro-batches and ranks).

    ``*_seqs`` counts the rows with at least one loss token, ``*_rows`` every row of the kind, loss tokens or not
    (a masked truncated rollout still counts, as in the reference's sample counts and verl's batch means).
    """

    rl_tokens: float
    rl_seqs: float
    sft_tokens: float
    sft_seqs: float
    rl_rows: float
    sft_rows: float

    def __add__(self, other: Normalizers) -> Normalizers:
        return Normalizers(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def as_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """``(6,)`` float64 in field order, e.g. for ``all_reduce``."""
        return torch.tensor(astuple(self), dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, t: Tensor) -> Normalizers:
        """Inverse of `as_tensor`."""
        return cls(*(float(x) for x in t.tolist()))


def count_normalizers(mask: Tensor, is_expert: Tensor) -> Normalizers:
    """Counts of one micro-batch from ``mask`` ``(B, T)`` and ``is_expert`` ``(B,)``."""
    row_tokens = mask.detach().float().sum(dim=-1)  # (B,)
    rl, sft = row_tokens[~is_expert.bool()], row_tokens[is_expert.bool()]
    rl_tokens, rl_seqs, sft_tokens, sft_seqs = torch.stack([rl.sum(), (rl > 0).sum(), sft.sum(), (sft > 0).sum()])
    return Normalizers(
        float(rl_tokens), float(rl_seqs), float(sft_tokens), float(sft_seqs), float(len(rl)), float(len(sft))
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


@dataclass
class LossOutput:
    """What `chord_loss` returns."""

    loss: Tensor  # scalar to back-propagate
    metrics: dict[str, Tensor]  # detached 0-dim tensors


def chord_loss(
    logprobs: Tensor,  # (B, T) current-policy log-probs
    old_logprobs: Tensor,  # (B, T) sampling-policy log-probs (expert rows: never read)
    advantages: Tensor,  # (B,) GRPO advantages (expert rows: never read)
    mask: Tensor,  # (B, T), 1 on completion tokens
    is_expert: Tensor,  # (B,) bool, True for expert demonstrations
    mu: float,  # SFT weight μ, see `mu_schedule`
    *,
    normalizers: Normalizers | None = None,  # global counts of the step; None: this batch's (full batch)
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    sft_weighting: SftWeighting = "phi",  # "phi" (CHORD-φ), "none" (plain SFT, CHORD-μ) or "is"
    rl_agg: LossAgg = "token-mean",
    sft_agg: LossAgg = "token-mean",
    horizon: int | None = None,  # constant length for "seq-mean-token-sum-norm" (pass max_new_tokens)
    entropy: Tensor | None = None,  # (B, T) token entropies, for the bonus and the metric
    entropy_coef: float = 0.0,
    ref_logprobs: Tensor | None = None,  # (B, T) reference-policy log-probs, for the KL penalty and the metric
    rollout_weights: Tensor | None = None,  # (B, T) detached per-token weights of the policy loss (e.g. TIS)
    off_policy: Tensor | None = None,  # (B,) bool: expert traces inside rollout groups (LUFFY), see `policy_loss`
    off_policy_gamma: float = 0.1,
    kl_coef: float = 0.0,
    kl_estimator: KlEstimator = "k2",
) -> LossOutput:
    """CHORD loss L = (1 − μ)·L_rl + μ·L_sft − entropy_coef·H + kl_coef·KL of a (micro-)batch.

    L_rl = agg(policy loss) over rollout tokens, L_sft = agg(SFT loss) over expert tokens, H = agg(entropy) over
    rollout tokens (``rl_agg``), KL = agg(KL to ``ref_logprobs``) over all response tokens, expert rows included
    (``rl_agg`` with the counts of both kinds). See `policy_loss`, `sft_loss`, `kl_penalty` and `aggregate`.

    Returns:
        `LossOutput`. Metrics that add up over micro-batches sharing the same global ``normalizers``: ``loss``,
        ``loss_rl``, ``loss_sft``, and token-means over rollout tokens of ``clip_frac``, ``clip_frac_lower``,
        ``approx_kl`` (old − new log-prob), ``entropy`` (0 without ``entropy``), over all response tokens of ``kl``
        (only with ``ref_logprobs``), and over expert tokens of ``phi_mean`` (φ(p)). Not additive: ``mu`` (a
        constant) and ``ratio_max`` (over rollout tokens, 0 if none; take the max over micro-batches).
    """
    norm = count_normalizers(mask, is_expert) if normalizers is None else normalizers
    expert = is_expert.bool().unsqueeze(-1)  # (B, 1)
    rl_mask, sft_mask = mask.bool() & ~expert, mask.bool() & expert  # (B, T) each

    def rl_term(values: Tensor) -> Tensor:
        return aggregate(values, rl_mask, rl_agg, norm.rl_tokens, norm.rl_seqs, horizon, norm.rl_rows)

    def token_mean(values: Tensor, kind: Literal["rl", "sft", "all"] = "rl") -> Tensor:  # detached metric
        m, n = {
            "rl": (rl_mask, norm.rl_tokens),
            "sft": (sft_mask, norm.sft_tokens),
            "all": (mask.bool(), norm.rl_tokens + norm.sft_tokens),
        }[kind]
        return aggregate(values.detach().float(), m, "token-mean", n, 0.0)

    clips = {"clip_low": clip_low, "clip_high": clip_high, "clip_ratio_c": clip_ratio_c}
    pg = policy_loss(
        logprobs, old_logprobs, advantages, rl_mask, **clips, off_policy=off_policy, off_policy_gamma=off_policy_gamma
    )
    loss_rl = rl_term(pg.losses if rollout_weights is None else pg.losses * rollout_weights)
    sft_losses = sft_loss(logprobs, sft_weighting)
    loss_sft = aggregate(sft_losses, sft_mask, sft_agg, norm.sft_tokens, norm.sft_seqs, horizon, norm.sft_rows)
    loss = (1.0 - mu) * loss_rl + mu * loss_sft  # the hybrid loss, the paper's L = (1 − μ)·L_RL + μ·L_SFT
    metrics = {"entropy": token_mean(entropy if entropy is not None else torch.zeros_like(logprobs))}
    if entropy is not None and entropy_coef != 0.0:
        loss = loss - entropy_coef * rl_term(entropy)  # entropy bonus on rollout tokens, outside 1 − μ (reference)
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        if kl_coef != 0.0:  # KL penalty on every response token, expert rows included, outside 1 − μ (reference)
            every = (
                norm.rl_tokens + norm.sft_tokens,
                norm.rl_seqs + norm.sft_seqs,
                horizon,
                norm.rl_rows + norm.sft_rows,
            )
            loss = loss + kl_coef * aggregate(kl, mask.bool(), rl_agg, *every)
        metrics["kl"] = token_mean(kl, "all")

    metrics.update(
        loss=loss.detach(),
        loss_rl=loss_rl.detach(),
        loss_sft=loss_sft.detach(),
        clip_frac=token_mean(pg.clipped),
        clip_frac_lower=token_mean(pg.dual_clipped),
        approx_kl=token_mean(old_logprobs - logprobs),
        phi_mean=token_mean(phi(logprobs.detach().float().exp()), "sft"),
        mu=torch.tensor(float(mu), device=logprobs.device),
        ratio_max=pg.ratio.float().amax(),  # 0 where masked, so 0 without rollout tokens
    )
    return LossOutput(loss=loss, metrics=metrics)
