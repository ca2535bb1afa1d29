"""LUFFY (Yan et al., "Learning to Reason under Off-Policy Guidance", arXiv 2504.14945), the paper's main off-policy
baseline: the expert's trace is a member of each prompt's rollout group.

    L = agg over the group's tokens of ℓ(r, A) − c_ent·H,    ℓ = ℓ_rl on sampled rows,  −A·f(π_θ) on the trace

The trace takes one of the ``num_generations`` places and its reward enters the group's advantages; its tokens were
not sampled, so their loss is the shaped −A·π_θ / (π_θ + γ), unclipped (``lit_chord.loss.shaped_loss``). There is
no SFT stream. As in LUFFY's code the entropy bonus is a token mean, whatever ``rl_loss_agg`` is;
``configs/demo_luffy.yaml`` follows the authors' script (two updates per batch, no clip, seq-mean-token-sum-norm).
"""

from __future__ import annotations

from lit_chord.loss import LossAgg, PolicyLoss, policy_loss
from lit_chord.objectives.base import LossInputs, Needs
from lit_chord.objectives.grpo import Grpo


class Luffy(Grpo):
    entropy_agg: LossAgg | None = "token-mean"

    def __init__(self, off_policy_gamma: float = 0.1, **kwargs) -> None:
        """The shaping of the trace's tokens; the RL settings are ``Grpo``'s.

        Args:
            off_policy_gamma: γ of the shaping f(π) = π / (π + γ) on the expert traces' tokens. LUFFY: 0.1.
            **kwargs: The RL settings (``lit_chord.objectives.grpo.Grpo``).
        """
        super().__init__(**kwargs)
        if off_policy_gamma <= 0:
            raise ValueError(
                f"model.objective.off_policy_gamma must be > 0, got {off_policy_gamma}: f(π) = π / (π + γ)"
            )
        self.off_policy_gamma = off_policy_gamma

    @property
    def needs(self) -> Needs:
        return Needs(traces_in_groups=True, reference=self.kl_coef > 0)

    def token_losses(self, x: LossInputs) -> PolicyLoss:
        """The dual-clip surrogate on sampled rows, the shaped loss on the traces (their clip statistics left out)."""
        return policy_loss(
            x.logprobs,
            x.old_logprobs,
            x.advantages,
            x.rl_mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            clip_ratio_c=self.clip_ratio_c,
            off_policy=x.off_policy,
            off_policy_gamma=self.off_policy_gamma,
        )
