"""Supervised fine-tuning on the expert demonstrations alone: CHORD with μ = 1, and no rollouts to pay for.

    L = agg over expert tokens of −log p

The step draws its SFT rows as CHORD's do (``data.expert_data``, ``expert_data_ratio`` or ``experts_per_step``) and
generates nothing; validation still samples the held-out sets. SFT → RL, the paper's strongest baseline, is this
run's best checkpoint (``PolicyExport``) as the model of a ``Grpo`` run.
"""

from __future__ import annotations

from torch import Tensor

from lit_chord.loss import LossAgg, TokenWeighting
from lit_chord.objectives.base import LossInputs, LossOutput, Needs, Objective
from lit_chord.objectives.chord import sft_term


class Sft(Objective):
    def __init__(self, sft_loss_agg: LossAgg = "token-mean", token_weighting: TokenWeighting = "none") -> None:
        """How the expert tokens are averaged and weighted.

        Args:
            sft_loss_agg: Aggregation over expert tokens (token-mean: every token of the step weighs the same).
            token_weighting: Per-token weight (``lit_chord.loss.sft_loss``): "none" is plain SFT; "phi", "is" and
                "low_p" give SFT with CHORD's weightings, without the RL term.
        """
        self.sft_loss_agg, self.token_weighting = sft_loss_agg, token_weighting

    @property
    def needs(self) -> Needs:
        return Needs(sft_stream=True, rollouts=False)

    def loss(self, x: LossInputs) -> LossOutput:
        metrics: dict[str, Tensor] = {}
        loss = sft_term(x, self.token_weighting, self.sft_loss_agg, metrics)
        metrics["loss"] = loss.detach()
        return LossOutput(loss, metrics)
