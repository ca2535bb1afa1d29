"""Supervised fine-tuning on the expert demonstrations alone: CHORD with μ = 1, and no rollouts to pay for.

    L = agg over expert tokens of −log p

The step draws its SFT rows as CHORD's do (``data.expert_data``, ``expert_data_ratio`` or ``experts_per_step``) and
generates nothing; validation still samples the held-out sets. With ``rollout_metrics`` it samples the step's
rollouts anyway, without training on them, for what comparisons measure on them: ``rollout/*`` and the policy's
entropy on its own samples (``train/entropy``). SFT → RL, the paper's strongest baseline, is this
run's best checkpoint (``PolicyExport``) as the model of a ``Grpo`` run.
"""

from __future__ import annotations

from torch import Tensor

from lit_chord.loss import LossAgg, TokenWeighting
from lit_chord.objectives.base import LossInputs, LossOutput, Needs, Objective
from lit_chord.objectives.chord import sft_term
from lit_chord.objectives.grpo import token_mean


class Sft(Objective):
    def __init__(
        self,
        sft_loss_agg: LossAgg = "token-mean",
        token_weighting: TokenWeighting = "none",
        rollout_metrics: bool = False,
    ) -> None:
        """How the expert tokens are averaged and weighted.

        Args:
            sft_loss_agg: Aggregation over expert tokens (token-mean: every token of the step weighs the same).
            token_weighting: Per-token weight (``lit_chord.loss.sft_loss``): "none" is plain SFT; "phi", "is" and
                "low_p" give SFT with CHORD's weightings, without the RL term.
            rollout_metrics: Sample and score the step's rollouts, untrained, for ``rollout/*`` and ``train/entropy``
                (a forward pass over them, no backward).
        """
        self.sft_loss_agg, self.token_weighting, self.rollout_metrics = sft_loss_agg, token_weighting, rollout_metrics

    @property
    def needs(self) -> Needs:
        return Needs(sft_stream=True, rollouts=self.rollout_metrics)

    def without_gradient(self, is_expert: Tensor, advantages: Tensor, off_policy: Tensor | None) -> Tensor:
        return ~is_expert  # rollouts, sampled for their metrics, are only scored

    def loss(self, x: LossInputs) -> LossOutput:
        metrics: dict[str, Tensor] = {}
        loss = sft_term(x, self.token_weighting, self.sft_loss_agg, metrics)
        metrics["loss"] = loss.detach()
        if self.rollout_metrics:
            metrics["entropy"] = token_mean(x.entropy, x.rl_mask, x.normalizers.rl_tokens)
        return LossOutput(loss, metrics)
