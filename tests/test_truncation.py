"""Truncated rollouts (``RolloutCallback.mask_truncated_completions``): they keep their reward and their place in the
group's statistics either way; by default their tokens are trained with their advantage (the paper-era reference,
verl, TRL, LUFFY), and with masking (DAPO's overlong filtering, Trinity-RFT 0.6.0) they carry no loss token."""

from __future__ import annotations

import math

import pytest
from helpers import cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.engines import Completion
from lit_chord.module import ChordModule
from lit_chord.objectives import Chord
from lit_chord.rollout_callback import RolloutCallback

# One group of 8: two responses cut off at the budget, two right, four wrong (each kind its own length in tokens).
LENGTHS = {"truncated": 5, "right": 2, "wrong": 3}
KINDS = ["truncated", "truncated", "right", "right", "wrong", "wrong", "wrong", "wrong"]


class ScriptedEngine:
    """The group above for every prompt; a right answer is token 7, a wrong one token 8, a cut-off one token 9."""

    uses_live_policy = False

    def attach(self, policy, stop_token_ids, pad_token_id):
        self.stop = stop_token_ids[0]

    def generate(self, prompt_ids, n, sampling):
        token = {"truncated": 9, "right": 7, "wrong": 8}
        group = [
            Completion([token[k]] * LENGTHS[k], finished=False)
            if k == "truncated"
            else Completion([token[k]] * (LENGTHS[k] - 1) + [self.stop], finished=True)
            for k in KINDS
        ]
        return [list(group) for _ in prompt_ids]

    def load_weights(self, named_tensors):
        pass


def paper_like_reward(right_text: str):
    """−1 for running out of tokens (as ``rewards.paper_math`` without an answer), else 1 for the right text."""

    def reward(completion: str, answer: str, truncated: bool = False) -> float:
        return -1.0 if truncated else float(completion == right_text)

    return reward


class Keep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch = batch
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items()}


def one_step(world, mask: bool) -> Keep:
    from transformers import AutoTokenizer

    reward = paper_like_reward(AutoTokenizer.from_pretrained(world / "model").decode([7]))
    keep = Keep()
    rollout = RolloutCallback(ScriptedEngine(), reward_fn=reward, max_new_tokens=5, mask_truncated_completions=mask)
    module = ChordModule(
        model=str(world / "model"), objective=Chord(mu_valley=0.0)
    )  # RL only: loss_rl is the whole loss
    trainer = cpu_trainer(max_steps=1, callbacks=[rollout, keep])
    trainer.fit(module, datamodule=tiny_datamodule(world, prompts_per_step=1, num_generations=8))
    return keep


@pytest.mark.parametrize("mask", [False, True], ids=["trained", "masked"])
def test_truncated_rollouts_keep_their_reward_and_train_unless_masked(tiny_world, mask):
    keep = one_step(tiny_world, mask)
    train = keep.batch.train
    rollouts = ~train.is_expert
    # Rewards [-1, -1, 1, 1, 0, 0, 0, 0]: mean 0, unbiased std sqrt(4/7) = 0.7559, so A = ±1/0.7559 = ±1.3229, 0.
    a = 1 / math.sqrt(4 / 7)
    expected = [-a, -a, a, a, 0, 0, 0, 0]
    assert train.advantages[rollouts].tolist() == pytest.approx(expected, abs=1e-5)
    tokens = train.loss_mask[rollouts].sum(-1).tolist()
    assert tokens == [0 if mask else 5] * 2 + [2, 2] + [3] * 4
    # On-policy, ratio 1: each token's policy loss is -A. token-mean over the rollout tokens:
    # trained: (2·5·a − 2·2·a + 4·3·0) / (2·5 + 2·2 + 4·3) = 6a / 26; masked: −2·2·a / (2·2 + 4·3) = −4a / 16.
    loss_rl = 6 * a / 26 if not mask else -4 * a / 16
    assert keep.logged["train/loss_rl"] == pytest.approx(loss_rl, rel=1e-5)
    assert keep.logged["rollout/truncated_frac"] == 0.25  # counted either way
