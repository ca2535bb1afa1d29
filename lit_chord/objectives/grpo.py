"""GRPO (Shao et al., DeepSeekMath, arXiv 2402.03300): on-policy RL with group-relative advantages, and the RL half
that CHORD, LUFFY and SRFT share.

    L = agg over rollout tokens of ℓ_rl(r, A) − c_ent·H + c_kl·KL

ℓ_rl is the dual-clip PPO surrogate (``lit_chord.loss.policy_loss``) and A the group advantage the rollout callback
computed. The entropy bonus and the KL penalty are outside any mixing weight, as the reference's actor applies them
(Trinity-RFT, verl: ``policy_loss = pg_loss − entropy_coef·entropy + kl_coef·kl``); the KL covers every response
token, expert rows included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_chord.loss import KlEstimator, LossAgg, PolicyLoss, aggregate, kl_penalty, policy_loss
from lit_chord.objectives.base import LossInputs, LossOutput, Needs, Objective


def token_mean(values: Tensor, mask: Tensor, tokens: float) -> Tensor:
    """A detached metric: the mean of ``values`` over ``mask``'s tokens of the whole update (``tokens`` of them)."""
    return aggregate(values.detach().float(), mask, "token-mean", tokens, 0.0)


class Grpo(Objective):
    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_ratio_c: float = 3.0,
        rl_loss_agg: LossAgg = "token-mean",
        entropy_coef: float = 0.0,
        kl_coef: float = 0.0,
        kl_estimator: KlEstimator = "k2",
    ) -> None:
        """The policy-gradient settings (the reference's defaults).

        Args:
            clip_low: PPO clip range below 1 for the importance ratio.
            clip_high: PPO clip range above 1.
            clip_ratio_c: Dual-clip bound for negative advantages.
            rl_loss_agg: Aggregation of the RL term over rollout tokens (and of the entropy bonus and KL penalty).
            entropy_coef: Entropy bonus on rollout tokens, outside any mixing weight (reference: 0).
            kl_coef: KL penalty to the initial policy on every response token, expert rows included (reference: 0;
                > 0 keeps a frozen copy of the policy, or under LoRA the base with the adapters off).
            kl_estimator: KL estimator: k1, k2 (the reference's default) or k3.
        """
        for name, value in [("entropy_coef", entropy_coef), ("kl_coef", kl_coef)]:
            if value < 0:
                raise ValueError(f"model.objective.{name} must be >= 0, got {value}")
        self.clip_low, self.clip_high, self.clip_ratio_c = clip_low, clip_high, clip_ratio_c
        self.rl_loss_agg = rl_loss_agg
        self.entropy_coef, self.kl_coef, self.kl_estimator = entropy_coef, kl_coef, kl_estimator

    entropy_agg: LossAgg | None = None  # the entropy bonus's aggregation; None: ``rl_loss_agg`` (the reference's)

    @property
    def needs(self) -> Needs:
        return Needs(reference=self.kl_coef > 0)

    def without_gradient(self, is_expert: Tensor, advantages: Tensor, off_policy: Tensor | None) -> Tensor:
        """A rollout with advantage 0 (a group with equal rewards) has ℓ_rl = −0·r, exactly 0 with its gradient, as
        long as no entropy bonus or KL penalty acts on it (an expert trace's shaped −0·f(π) too)."""
        if self.entropy_coef or self.kl_coef:
            return is_expert & False
        return ~is_expert & (advantages == 0)

    def rl_term(self, x: LossInputs, values: Tensor, agg: LossAgg | None = None) -> Tensor:
        """``values`` aggregated over the rollout rows' tokens with the update's counts."""
        n = x.normalizers
        mode = agg or self.rl_loss_agg
        return aggregate(values, x.rl_mask, mode, n.rl_tokens, n.rl_seqs, x.horizon, n.rl_rows)

    def token_losses(self, x: LossInputs) -> PolicyLoss:
        """The per-token policy loss of the rollout rows: the dual-clip surrogate."""
        return policy_loss(
            x.logprobs,
            x.old_logprobs,
            x.advantages,
            x.rl_mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            clip_ratio_c=self.clip_ratio_c,
        )

    def token_weights(self, x: LossInputs, metrics: dict[str, Tensor]) -> Tensor | None:
        """Detached ``(B, T)`` weights an objective puts on each token's policy loss (None: 1)."""
        return None

    def policy_term(self, x: LossInputs, metrics: dict[str, Tensor]) -> Tensor:
        """L_rl, each token's loss weighted by ``rollout_weights`` (TIS) and the objective's ``token_weights``; its
        clip statistics go into ``metrics``."""
        pg = self.token_losses(x)
        losses = pg.losses
        for weights in (x.rollout_weights, self.token_weights(x, metrics)):
            losses = losses if weights is None else losses * weights
        loss_rl = self.rl_term(x, losses)
        rl_mask, tokens = x.rl_mask, x.normalizers.rl_tokens
        metrics.update(
            loss_rl=loss_rl.detach(),
            clip_frac=token_mean(pg.clipped, rl_mask, tokens),
            clip_frac_lower=token_mean(pg.dual_clipped, rl_mask, tokens),
            approx_kl=token_mean(x.old_logprobs - x.logprobs, rl_mask, tokens),
            ratio_max=pg.ratio.float().amax(),  # 0 where masked, so 0 without rollout tokens
        )
        return loss_rl

    def regularizers(self, x: LossInputs, metrics: dict[str, Tensor]) -> Tensor:
        """−c_ent·H over rollout tokens + c_kl·KL over every response token; ``entropy`` and ``kl`` into ``metrics``."""
        n = x.normalizers
        metrics["entropy"] = token_mean(x.entropy, x.rl_mask, n.rl_tokens)
        penalty = torch.zeros((), dtype=x.logprobs.dtype, device=x.logprobs.device)
        if self.entropy_coef:
            penalty = penalty - self.entropy_coef * self.rl_term(x, x.entropy, self.entropy_agg)
        if x.ref_logprobs is not None:
            kl = kl_penalty(x.logprobs, x.ref_logprobs, self.kl_estimator)
            every = (n.rl_tokens + n.sft_tokens, n.rl_seqs + n.sft_seqs, x.horizon, n.rl_rows + n.sft_rows)
            if self.kl_coef:
                penalty = penalty + self.kl_coef * aggregate(kl, x.mask.bool(), self.rl_loss_agg, *every)
            metrics["kl"] = token_mean(kl, x.mask.bool(), every[0])
        return penalty

    def loss(self, x: LossInputs) -> LossOutput:
        metrics: dict[str, Tensor] = {}
        loss = self.policy_term(x, metrics) + self.regularizers(x, metrics)
        metrics["loss"] = loss.detach()
        return LossOutput(loss, metrics)
