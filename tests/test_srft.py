"""Tests for the SRFT objective (``lit_chord.objectives.srft``): its entropy-weighted terms by hand, and a step on
the tiny world with the demonstrations inside their groups."""

import math

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.loss import count_normalizers
from lit_chord.module import ChordModule
from lit_chord.objectives import LossInputs, Needs
from lit_chord.objectives.srft import Srft
from lit_chord.rollout_callback import RolloutCallback


def test_srft_loss_and_gradient_by_hand():
    """One group: rollout 0 (A = 1), rollout 1 (A = −0.5), the demonstration (A = 0.5). On-policy (ratio 1), token-mean.

    rollout 0, H = (0, ln 2): w_rl = 0.1·e^H = (0.1, 0.2), token losses −A·w = (−0.1, −0.2)
    rollout 1, negative: weight 1, token losses 0.5, 0.5
    demo, π = (0.4, 0.9): shaped −0.5·π/(π + 0.1) = (−0.4, −0.45); H = (ln 2, 0): w_sft = 0.5·e^−H = (0.25, 0.5)
    L_rl = (−0.1 − 0.2 + 0.5 + 0.5 − 0.4 − 0.45) / 6 = −0.025;  L_sft = (−0.25·ln 0.4 − 0.5·ln 0.9) / 2
    """
    logprobs = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.4, 0.9]])).requires_grad_()
    entropy = torch.tensor([[0.0, math.log(2)], [1.0, 1.0], [math.log(2), 0.0]])
    mask, is_expert, off_policy = torch.ones(3, 2), torch.zeros(3, dtype=torch.bool), torch.tensor([False, False, True])
    x = LossInputs(
        logprobs=logprobs,
        old_logprobs=logprobs.detach(),
        entropy=entropy,
        mask=mask,
        is_expert=is_expert,
        advantages=torch.tensor([1.0, -0.5, 0.5]),
        normalizers=count_normalizers(mask, is_expert, off_policy),
        step=1,
        horizon=2,
        off_policy=off_policy,
    )
    out = Srft().loss(x)
    loss_sft = (-0.25 * math.log(0.4) - 0.5 * math.log(0.9)) / 2
    assert out.metrics["loss_rl"].item() == pytest.approx(-0.025)
    assert out.metrics["loss_sft"].item() == pytest.approx(loss_sft)
    assert out.loss.item() == pytest.approx(-0.025 + loss_sft)
    assert out.metrics["sft_weight"].item() == pytest.approx(0.375)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    # rollout 0: −w/6; rollout 1: −A/6 = 1/12; demo: −A·γπ/(π + γ)²/6 − w_sft/2
    expected = [[-0.1 / 6, -0.2 / 6], [1 / 12, 1 / 12], [-0.08 / 6 - 0.125, -0.045 / 6 - 0.25]]
    torch.testing.assert_close(grad, torch.tensor(expected))


def test_a_demonstration_with_advantage_zero_still_trains_its_sft_term():
    is_expert, advantages = torch.zeros(3, dtype=torch.bool), torch.zeros(3)
    off_policy = torch.tensor([False, False, True])
    assert Srft().without_gradient(is_expert, advantages, off_policy).tolist() == [True, True, False]
    assert Srft().needs == Needs(traces_in_groups=True)
    with pytest.raises(ValueError, match="model.objective.sft_coef must be >= 0"):
        Srft(sft_coef=-1.0)


class Keep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch = batch
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_an_srft_step_puts_each_demonstration_in_its_group_and_trains_on_it(tiny_world):
    module = ChordModule(model=str(tiny_world / "model"), objective=Srft(entropy_coef=0.001))
    keep = Keep()
    rollout = RolloutCallback(EchoEngine(), reward_fn=lambda completion, answer: float(len(completion) % 2))
    data = tiny_datamodule(tiny_world, expert_data=None, expert_data_ratio=0.0)
    cpu_trainer(max_steps=1, callbacks=[rollout, keep]).fit(module, datamodule=data)
    rows = keep.batch.train
    assert not rows.is_expert.any() and rows.off_policy.tolist() == [False, False, False, True] * 2
    assert keep.logged["train/loss_sft"] > 0 and 0 < keep.logged["train/sft_weight"] <= 0.5
    assert "rollout/expert_trace_reward" in keep.logged
