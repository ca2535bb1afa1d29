"""CHORD (Zhang et al., "On-Policy RL Meets Off-Policy Experts", arXiv 2508.11408): SFT on expert demonstrations
as a dynamically weighted auxiliary term of GRPO, in one step.

    L     = (1 − μ)·L_rl + μ·L_sft − c_ent·H + c_kl·KL        the paper's hybrid loss; the regularizers are GRPO's,
                                                               outside 1 − μ as the reference applies them
    L_sft = agg over expert tokens of −w(p)·log p,  p = π_θ(y*_t),  w(p) = p(1 − p) detached            CHORD-φ
    μ     = linear warm-up 0 → μ_peak, half-cosine μ_peak → μ_valley, then μ_valley                       CHORD-μ

Rollout rows enter only L_rl (``Grpo``), the SFT stream's rows only L_sft. Each term is normalized by its own token
(or sequence) count, so L_rl and L_sft both weigh 1 before mixing, however many expert rows a step holds. Semantics
follow the reference implementation, Trinity-RFT's ``mix_chord``: ``configs/chord_mu.yaml`` and
``configs/chord_phi.yaml`` hold the paper's two variants.
"""

from __future__ import annotations

import math

from torch import Tensor

from lit_chord.loss import LossAgg, TokenWeighting, aggregate, phi, sft_loss
from lit_chord.objectives.base import LossInputs, LossOutput, Needs
from lit_chord.objectives.grpo import Grpo, token_mean


def mu_schedule(step: int, warmup_steps: int, decay_steps: int, peak: float, valley: float) -> float:
    """SFT weight μ at a 1-based optimizer step (CHORD-μ); ``warmup_steps = decay_steps = 0`` gives ``valley``."""
    if step < warmup_steps:
        return step / warmup_steps * peak  # linear warm-up from 0
    if step >= warmup_steps + decay_steps:
        return valley
    return (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps)) + valley


def sft_term(x: LossInputs, weighting: TokenWeighting, agg: LossAgg, metrics: dict[str, Tensor]) -> Tensor:
    """L_sft over the SFT stream's tokens; ``loss_sft`` and ``phi_mean`` (φ(p) over them) into ``metrics``."""
    n = x.normalizers
    loss_sft = aggregate(
        sft_loss(x.logprobs, weighting), x.sft_mask, agg, n.sft_tokens, n.sft_seqs, x.horizon, n.sft_rows
    )
    metrics["loss_sft"] = loss_sft.detach()
    metrics["phi_mean"] = token_mean(phi(x.logprobs.detach().float().exp()), x.sft_mask, n.sft_tokens)
    return loss_sft


class Chord(Grpo):
    def __init__(
        self,
        mu_warmup_steps: int = 0,
        mu_decay_steps: int = 0,
        mu_peak: float = 0.1,
        mu_valley: float = 0.1,
        token_weighting: TokenWeighting = "phi",
        sft_loss_agg: LossAgg = "token-mean",
        **kwargs,
    ) -> None:
        """μ's schedule and the expert tokens' weighting; the RL half's settings are ``Grpo``'s. The defaults are the
        reference's: CHORD-φ with a constant μ = 0.1.

        Args:
            mu_warmup_steps: CHORD-μ: steps of linear warmup of μ from 0 to ``mu_peak``.
            mu_decay_steps: CHORD-μ: steps of half-cosine decay of μ from ``mu_peak`` to ``mu_valley``.
            mu_peak: Largest weight of the SFT term. μ ∈ [0, 1].
            mu_valley: Weight of the SFT term after warmup + decay (and the constant μ when both are 0).
            token_weighting: Per-token weight of the expert loss (``lit_chord.loss.sft_loss``): "phi" is CHORD-φ,
                p(1 − p) (reference ``enable_phi_function: true``); "none" plain SFT (``false``, CHORD-μ); "is" the
                paper's IS ablation (p); "low_p" 1 − p, for base models (Trinity-RFT #425).
            sft_loss_agg: Aggregation of the SFT term over expert tokens.
            **kwargs: The RL half's settings (``lit_chord.objectives.grpo.Grpo``).
        """
        super().__init__(**kwargs)
        for name, value in [("mu_peak", mu_peak), ("mu_valley", mu_valley)]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"model.objective.{name} must lie in [0, 1], got {value}")
        for name, steps in [("mu_warmup_steps", mu_warmup_steps), ("mu_decay_steps", mu_decay_steps)]:
            if steps < 0:
                raise ValueError(f"model.objective.{name} must be >= 0, got {steps}")
        self.mu_warmup_steps, self.mu_decay_steps = mu_warmup_steps, mu_decay_steps
        self.mu_peak, self.mu_valley = mu_peak, mu_valley
        self.token_weighting, self.sft_loss_agg = token_weighting, sft_loss_agg

    @property
    def needs(self) -> Needs:
        return Needs(sft_stream=True, reference=self.kl_coef > 0)

    def mu(self, step: int) -> float:
        """μ at the 1-based optimizer ``step``: it counts steps (rollout batches), never micro-steps or updates."""
        return mu_schedule(step, self.mu_warmup_steps, self.mu_decay_steps, self.mu_peak, self.mu_valley)

    def schedule(self, step: int) -> dict[str, float]:
        return {"mu": self.mu(step)}

    def check_run(self, max_steps: int) -> list[str]:
        """A μ schedule longer than the run: a 300-step decay in a 20-step run keeps μ near its peak throughout."""
        span = self.mu_warmup_steps + self.mu_decay_steps
        if not 0 < max_steps < span:
            return []
        return [
            f"the μ schedule spans {span} steps (mu_warmup_steps + mu_decay_steps) but trainer.max_steps is "
            f"{max_steps}: μ ends at {self.mu(max_steps):.2f}, not mu_valley={self.mu_valley}"
        ]

    def describe(self) -> str:
        if self.mu_warmup_steps == self.mu_decay_steps == 0:
            mu = f"μ {self.mu_valley} constant"
        else:
            warmup = f"0 → {self.mu_peak} over {self.mu_warmup_steps} steps, then " if self.mu_warmup_steps else ""
            mu = f"μ {warmup}{self.mu_peak} → {self.mu_valley} over {self.mu_decay_steps} steps"
        return f"CHORD, {mu}, token weighting {self.token_weighting}"

    def loss(self, x: LossInputs) -> LossOutput:
        mu = self.mu(x.step)
        metrics: dict[str, Tensor] = {}
        loss_rl = self.policy_term(x, metrics)
        loss_sft = sft_term(x, self.token_weighting, self.sft_loss_agg, metrics)
        loss = (1.0 - mu) * loss_rl + mu * loss_sft  # the hybrid loss, the paper's L = (1 − μ)·L_RL + μ·L_SFT
        loss = loss + self.regularizers(x, metrics)
        metrics["loss"] = loss.detach()
        return LossOutput(loss, metrics)
