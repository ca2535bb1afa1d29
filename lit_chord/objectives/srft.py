"""SRFT (Fu et al., "SRFT: A Single-Stage Method with Supervised and Reinforcement Fine-Tuning for Reasoning",
arXiv 2506.19767): LUFFY's mixed groups, plus SFT on the same demonstrations, both weighted by the policy's entropy.

    L = L_sft^demo + L_rl^demo + L_rl^self − c_ent·H

    L_sft^demo = token-mean over the traces' tokens of −w_sft·log π_θ,     w_sft = 0.5·sg(exp(−H_t))
    L_rl^demo  = LUFFY's shaped −A·π_θ / (π_θ + γ) on the traces' tokens (``Luffy``)
    L_rl^self  = the surrogate on sampled tokens, those of positive-advantage rollouts weighted by
                 w_rl = 0.1·sg(exp(H_t)); negative ones keep weight 1

H_t is the policy's entropy at the token's position, detached. The weights are the paper's: SFT pulls hardest
where the policy is already sure (low entropy), so demonstrations refine rather than overwrite; positive samples
reinforce least where the policy is sure, so their entropy does not collapse. The demonstration sits in its
prompt's group before the advantages are computed, as in LUFFY, replacing one of ``num_generations`` rollouts.

Where the authors' code (fyqqyf/SRFT, a LUFFY fork; read through third-party notes, not first-hand) differs from
the paper: it weights SFT by exp(+H), not exp(−H); it shapes the demonstration's RL term with LUFFY's
π / (π + 0.1) where the paper writes the bare ratio π_θ / 1, which ``off_policy_gamma`` keeps; its script adds
an entropy bonus of 0.001 (``configs/demo_srft.yaml`` sets it). The weights follow the paper, as stated above.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_chord.loss import aggregate
from lit_chord.objectives.base import LossInputs, LossOutput
from lit_chord.objectives.grpo import token_mean
from lit_chord.objectives.luffy import Luffy


class Srft(Luffy):
    def __init__(self, sft_coef: float = 0.5, positive_coef: float = 0.1, **kwargs) -> None:
        """The two entropy weights' coefficients; the trace's shaping and the RL settings are ``Luffy``'s.

        Args:
            sft_coef: c in the SFT weight w_sft = c·exp(−H_t) on the demonstrations' tokens. SRFT: 0.5.
            positive_coef: c in the weight w_rl = c·exp(H_t) on positive-advantage rollouts' tokens. SRFT: 0.1.
            **kwargs: ``off_policy_gamma`` and the RL settings (``lit_chord.objectives.luffy.Luffy``).
        """
        super().__init__(**kwargs)
        for name, value in [("sft_coef", sft_coef), ("positive_coef", positive_coef)]:
            if value < 0:
                raise ValueError(f"model.objective.{name} must be >= 0, got {value}")
        self.sft_coef, self.positive_coef = sft_coef, positive_coef

    def traces(self, x: LossInputs) -> Tensor:
        """``(B, 1)`` bool: the rows that are demonstrations inside their group."""
        off_policy = torch.zeros_like(x.is_expert) if x.off_policy is None else x.off_policy.bool()
        return off_policy.unsqueeze(-1)

    def token_weights(self, x: LossInputs, metrics: dict[str, Tensor]) -> Tensor:
        """w_rl = c·exp(H_t) on the sampled tokens of positive-advantage rollouts, 1 elsewhere."""
        positive = x.rl_mask & ~self.traces(x) & (x.advantages > 0).unsqueeze(-1)
        w_rl = self.positive_coef * x.entropy.detach().float().exp()
        return torch.where(positive, w_rl, torch.ones_like(w_rl))

    def without_gradient(self, is_expert: Tensor, advantages: Tensor, off_policy: Tensor | None) -> Tensor:
        """A trace with advantage 0 still has its SFT term."""
        none = super().without_gradient(is_expert, advantages, off_policy)
        return none if off_policy is None else none & ~off_policy.bool()

    def loss(self, x: LossInputs) -> LossOutput:
        metrics: dict[str, Tensor] = {}
        loss_rl = self.policy_term(x, metrics)  # L_rl^demo + L_rl^self, aggregated over the groups' tokens
        demo, n = x.mask.bool() & self.traces(x), x.normalizers
        w_sft = self.sft_coef * (-x.entropy.detach().float()).exp()
        loss_sft = aggregate(-w_sft * x.logprobs, demo, "token-mean", n.trace_tokens, n.trace_seqs)
        loss = loss_rl + loss_sft + self.regularizers(x, metrics)
        metrics |= {
            "loss": loss.detach(),
            "loss_sft": loss_sft.detach(),
            "sft_weight": token_mean(w_sft, demo, n.trace_tokens),
        }
        return LossOutput(loss, metrics)
