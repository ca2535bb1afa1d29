"""Several optimizer updates per rollout batch (``model.ppo_epochs``, ``model.ppo_mini_batches``): the old
log-probabilities are taken once before the first update, so later updates see ratios ≠ 1 and the clip acts.
Checked against a naive re-implementation: one full-batch forward per update, the clipped objective written out."""

from __future__ import annotations

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.batch import TrainTensors, split_mini_batches
from lit_chord.module import ChordModule
from lit_chord.objectives import Chord
from lit_chord.rollout_callback import RolloutCallback

LR, MU, GROUP = 0.5, 0.5, 4


def length_reward(completion: str, answer: str) -> float:
    return float(len(completion) % 3)


def test_mini_batches_deal_out_whole_groups_and_expert_rows_in_turn():
    # rows: expert e0, e1, e2, then 3 groups of 2 rollouts (g0 g0 g1 g1 g2 g2)
    is_expert = torch.tensor([True, True, True] + [False] * 6)
    rows = TrainTensors(
        input_ids=torch.arange(9)[:, None].repeat(1, 2),
        attention_mask=torch.ones(9, 2, dtype=torch.long),
        loss_mask=torch.ones(9, 2),
        is_expert=is_expert,
        advantages=torch.zeros(9),
    )
    first, second = split_mini_batches(rows, 2, group_size=2)
    assert first.input_ids[:, 0].tolist() == [0, 2, 3, 4, 7, 8]  # e0, e2, g0, g2
    assert second.input_ids[:, 0].tolist() == [1, 5, 6]  # e1, g1


class Keep(Callback):
    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows = batch.train
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items()}


def naive_logprobs(model, rows: TrainTensors) -> torch.Tensor:
    logits = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, rows.input_ids[:, 1:, None]).squeeze(-1)  # (B, T - 1)


def naive_updates(world, initial, rows: TrainTensors, epochs: int, mini_batches: int):
    """Each update: L = (1 − μ)·token-mean over rollout tokens of the dual-clip PPO loss + μ·token-mean of −log p over
    expert tokens (φ off), plain SGD; the old log-probabilities from the policy before the first update."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world / "model", dtype=torch.float32)
    model.load_state_dict(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with torch.no_grad():
        old = naive_logprobs(model, rows)
    expert_seen = rollout_seen = 0
    share = []
    for row in range(len(rows)):  # which mini-batch each row joins, counted by hand
        if rows.is_expert[row]:
            share.append(expert_seen % mini_batches)
            expert_seen += 1
        else:
            share.append(rollout_seen // GROUP % mini_batches)
            rollout_seen += 1
    clip_fracs = []
    for _ in range(epochs):
        for j in range(mini_batches):
            keep = torch.tensor([s == j for s in share])
            mini = rows.select(keep)
            logprobs = naive_logprobs(model, mini)
            mask = mini.loss_mask[:, :-1]
            rl = mask * ~mini.is_expert[:, None]
            sft = mask * mini.is_expert[:, None]
            ratio = torch.exp(logprobs - old[keep])
            a = mini.advantages[:, None]
            unclipped, clipped = -a * ratio, -a * ratio.clamp(0.8, 1.2)
            pg = torch.maximum(unclipped, clipped)
            pg = torch.where(a < 0, torch.minimum(pg, -3.0 * a), pg)
            loss = (1 - MU) * (pg * rl).sum() / rl.sum() + MU * (-logprobs * sft).sum() / sft.sum()
            clip_fracs.append((((clipped > unclipped) * rl).sum() / rl.sum()).item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, clip_fracs


@pytest.mark.parametrize(("epochs", "mini_batches"), [(2, 1), (2, 2)])
def test_several_updates_match_a_naive_loop_and_the_clip_acts(tiny_world, epochs, mini_batches):
    keep = Keep()
    module = ChordModule(
        model=str(tiny_world / "model"),
        micro_batch_size=3,
        # the module's micro-batches and packing against the naive full-batch forwards
        max_grad_norm=0.0,
        ppo_epochs=epochs,
        ppo_mini_batches=mini_batches,
        optimizer=lambda params: torch.optim.SGD(params, lr=LR),
        objective=Chord(mu_valley=MU, token_weighting="none"),
    )
    rollout = RolloutCallback(engine=EchoEngine(), reward_fn=length_reward, max_new_tokens=6)
    trainer = cpu_trainer(max_steps=1, callbacks=[rollout, keep])
    trainer.fit(module, datamodule=tiny_datamodule(tiny_world, prompts_per_step=4, num_generations=GROUP))
    assert trainer.global_step == 1  # the updates of one rollout batch are one step
    naive, clip_fracs = naive_updates(tiny_world, keep.initial, keep.rows, epochs, mini_batches)
    assert clip_fracs[0] == 0.0 and max(clip_fracs[1:]) > 0.05, clip_fracs  # ratio 1 first, clipped later
    assert keep.logged["train/clip_frac"] == pytest.approx(sum(clip_fracs) / len(clip_fracs), abs=1e-6)
    for name, weight in naive.state_dict().items():
        torch.testing.assert_close(module.policy.state_dict()[name], weight, atol=1e-5, rtol=1e-4, msg=name)


def test_fewer_prompt_groups_than_mini_batches_is_refused(tiny_world):
    module = ChordModule(model=str(tiny_world / "model"), ppo_mini_batches=4)
    trainer = cpu_trainer(max_steps=1, callbacks=[RolloutCallback(engine=EchoEngine(), max_new_tokens=6)])
    with pytest.raises(ValueError, match="ppo_mini_batches=4 needs at least as many prompt groups per rank; this"):
        trainer.fit(module, datamodule=tiny_datamodule(tiny_world, prompts_per_step=2))
