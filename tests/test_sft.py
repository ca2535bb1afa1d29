"""Tests for the SFT objective (``lit_chord.objectives.sft``): CHORD at μ = 1, without rollouts."""

import json

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.loss import count_normalizers
from lit_chord.module import ChordModule
from lit_chord.objectives import Chord, LossInputs, Needs, Sft
from lit_chord.rollout_callback import RolloutCallback


class CountingEngine(EchoEngine):
    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompt_ids, n, sampling):
        self.calls += 1
        return super().generate(prompt_ids, n, sampling)


class Keep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows = batch.train
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_sft_is_chord_at_mu_one():
    torch.manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(4, 5, 6), -1)[..., 0].requires_grad_()
    mask, is_expert = torch.ones(4, 5), torch.tensor([True, False, True, False])
    x = LossInputs(
        logprobs=logprobs,
        old_logprobs=logprobs.detach(),
        entropy=torch.zeros(4, 5),
        mask=mask,
        is_expert=is_expert,
        advantages=torch.randn(4),
        normalizers=count_normalizers(mask, is_expert),
        step=1,
        horizon=5,
    )
    sft, chord = Sft().loss(x), Chord(mu_peak=1.0, mu_valley=1.0, token_weighting="none").loss(x)
    torch.testing.assert_close(sft.loss, chord.loss, rtol=0, atol=1e-7)
    expected = -(logprobs[is_expert]).mean()  # token-mean of −log p over the expert rows' 10 tokens
    torch.testing.assert_close(sft.loss, expected, rtol=0, atol=1e-7)
    assert Sft().needs == Needs(sft_stream=True, rollouts=False)


def test_an_sft_step_generates_nothing_and_trains_as_chord_at_mu_one(tiny_world):
    """The engine is never called; the step's rows are the expert rows alone; the weights after two steps are those
    of CHORD at μ = 1, whose rollouts weigh 0."""
    weights, engines, logged = {}, {}, {}
    variants = [
        ("sft", Sft()),
        ("sampling", Sft(rollout_metrics=True)),
        ("chord", Chord(mu_peak=1.0, mu_valley=1.0, token_weighting="none")),
    ]
    for name, objective in variants:
        torch.manual_seed(0)
        module = ChordModule(
            model=str(tiny_world / "model"), objective=objective, optimizer=lambda p: torch.optim.SGD(p, lr=0.5)
        )
        engines[name], keep = CountingEngine(), Keep()
        rollout = RolloutCallback(engines[name], max_new_tokens=4)
        cpu_trainer(max_steps=2, callbacks=[rollout, keep]).fit(module, datamodule=tiny_datamodule(tiny_world))
        weights[name] = torch.cat([p.detach().flatten() for p in module.policy.parameters()])
        logged[name] = keep.logged
        if name == "sft":
            assert keep.rows.is_expert.all() and len(keep.rows) == 2
    assert "train/mu" not in logged["sft"] and not any(k.startswith("rollout/") for k in logged["sft"])
    assert "train/entropy" not in logged["sft"]
    # rollout_metrics: the same rollouts and entropy as CHORD's, and still no gradient from them
    for key in ("rollout/reward_mean", "rollout/response_len", "train/entropy"):
        assert logged["sampling"][key] == pytest.approx(logged["chord"][key], abs=1e-6)
    assert (engines["sft"].calls, engines["sampling"].calls, engines["chord"].calls) == (0, 2, 2)
    torch.testing.assert_close(weights["sft"], weights["chord"], rtol=0, atol=1e-6)
    torch.testing.assert_close(weights["sampling"], weights["chord"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cut", [{"micro_batch_size": 1}, {"micro_batch_size": 3}, {"max_tokens_per_micro_batch": 40}])
def test_an_sft_step_cut_into_micro_batches_equals_the_full_batch_step(tiny_world, tmp_path, cut):
    """The bug class the 2026 replications found in SFT → RL baselines (arXiv 2604.23747): a token mean taken per
    micro-batch and then averaged over micro-batches weighs a short row's tokens more than a long row's. Here the
    step's token count is global, so rows one per pass, three per pass, or packed by a token budget move the weights
    exactly as one pass over the whole step does (2 ranks: ``test_distributed.py``, slow tier)."""
    expert = tmp_path / "expert.jsonl"  # responses of 1 to 6 words: rows of different lengths
    records = [{"problem": f"Reverse {n}.", "response": " ".join(["so"] * n) + f" \\boxed{{{n}}}"} for n in range(1, 7)]
    expert.write_text("".join(json.dumps(record) + "\n" for record in records))
    weights, lengths = {}, None
    for name, rows_or_budget in [("full", {"micro_batch_size": 64}), ("cut", cut)]:
        torch.manual_seed(0)
        module = ChordModule(
            model=str(tiny_world / "model"),
            objective=Sft(),
            optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
            **rows_or_budget,
        )
        keep = Keep()
        data = tiny_datamodule(tiny_world, expert_data=str(expert), experts_per_step=6)
        cpu_trainer(max_steps=1, callbacks=[RolloutCallback(EchoEngine()), keep]).fit(module, datamodule=data)
        weights[name] = torch.cat([p.detach().flatten() for p in module.policy.parameters()])
        lengths = keep.rows.loss_mask.sum(-1).tolist()
    assert len(set(lengths)) > 1  # rows of different lengths: a per-micro-batch mean would weigh them differently
    torch.testing.assert_close(weights["cut"], weights["full"], rtol=0, atol=1e-6)
