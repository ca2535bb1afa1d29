"""What one optimizer step means on the paths real runs take: the reference's defaults, the constant horizon of
seq-mean-token-sum-norm, gradient clipping under 16-mixed, truncated importance sampling's bounds, and a final
validation of the final weights."""

from __future__ import annotations

import csv
import inspect

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision

from lit_chord.module import ChordModule
from lit_chord.rollout_callback import RolloutCallback


class Keep(Callback):
    """The last step's logged metrics and the rows it trained on."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.rows = batch.train


def length_reward(completion: str, answer: str) -> float:
    return float(len(completion) % 3)  # varied rewards, so advantages are not all 0


def one_step(world, plugins=(), callbacks=(), max_new_tokens=8, **module_kwargs):
    torch.manual_seed(0)
    keep = Keep()
    module = ChordModule(model=str(world / "model"), **module_kwargs)
    rollout = RolloutCallback(EchoEngine(), reward_fn=length_reward, max_new_tokens=max_new_tokens)
    trainer = cpu_trainer(max_steps=1, plugins=list(plugins), callbacks=[rollout, keep, *callbacks])
    trainer.fit(module, datamodule=tiny_datamodule(world))
    return module, keep


def test_module_defaults_are_the_references_chord_phi():
    # Trinity-RFT mix_chord defaults: mu_warmup_steps 0, mu_decay_steps 0, mu_peak 0.1, mu_valley 0.1, φ on; KL k2.
    defaults = {k: p.default for k, p in inspect.signature(ChordModule.__init__).parameters.items()}
    chord_phi = {"mu_warmup_steps": 0, "mu_decay_steps": 0, "mu_peak": 0.1, "mu_valley": 0.1, "sft_weighting": "phi"}
    assert {k: defaults[k] for k in chord_phi} == chord_phi
    assert defaults["kl_estimator"] == "k2"


def test_seq_mean_token_sum_norm_divides_by_the_generation_budget(tiny_world):
    """μ = 0 and ratio 1, so each rollout token's loss is −A: loss_rl = Σ_rows (−A·n_row) / (rows · max_new_tokens).
    The horizon was the step's padded width − 1, which changes from step to step and from rank to rank."""
    module, keep = one_step(
        tiny_world, max_new_tokens=12, mu_valley=0.0, rl_loss_agg="seq-mean-token-sum-norm", micro_batch_size=3
    )
    rows = keep.rows
    tokens = rows.loss_mask.sum(-1)
    rollout = ~rows.is_expert & (tokens > 0)
    assert rows.input_ids.shape[1] - 1 != 12 and rollout.sum() > 1 and rows.advantages[rollout].abs().sum() > 0
    expected = (-rows.advantages[rollout] * tokens[rollout]).sum() / (rollout.sum() * 12)
    assert keep.logged["train/loss_rl"] == pytest.approx(expected.item(), abs=1e-6)


def test_16_mixed_clips_the_unscaled_gradient(tiny_world):
    """Under 16-mixed the loss is scaled (here by 1024) until Lightning's plugin unscales the gradients inside
    optimizer.step. Clipped before that, the logged norm was 1024 times the true one and the update 1024 times too
    small. Now both match a float32 step up to float16 rounding."""
    kwargs = dict(max_grad_norm=1e-3, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))  # clipping is active
    full, full_keep = one_step(tiny_world, **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    half, half_keep = one_step(tiny_world, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], **kwargs)
    assert full_keep.logged["train/grad_norm"] > 1e-3  # so the clip changed the update
    assert half_keep.logged["train/grad_norm"] == pytest.approx(full_keep.logged["train/grad_norm"], rel=2e-2)
    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_world / "model").named_parameters())
    step_full = torch.cat([(p.detach() - initial[n]).flatten() for n, p in full.policy.named_parameters()])
    step_half = torch.cat([(p.detach() - initial[n]).flatten() for n, p in half.policy.named_parameters()])
    assert step_full.norm().item() == pytest.approx(1e-3, rel=1e-3)  # SGD lr 1: the clipped gradient's norm
    assert (step_half - step_full).norm() / step_full.norm() < 5e-2


def test_tis_cap_below_one_is_refused_and_without_engine_logprobs_it_says_it_does_nothing(tiny_world):
    with pytest.raises(ValueError, match="tis_cap"):
        ChordModule(model="x", tis_cap=0.5)
    with pytest.warns(UserWarning, match="tis_cap=2.0 has no effect") as caught:
        one_step(tiny_world, tis_cap=2.0)  # the transformers engine reports no log-probabilities
    assert sum("tis_cap" in str(w.message) for w in caught) == 1  # once, not every micro-batch


def test_the_final_weights_are_validated_when_max_steps_is_off_the_interval(tiny_world, tmp_path):
    """3 steps, validation every 2: the run validates after step 2 and after the last step (it stopped at 2)."""
    module = ChordModule(model=str(tiny_world / "model"), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer = cpu_trainer(
        max_steps=3,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0,
        logger=CSVLogger(tmp_path, name=""),
        callbacks=[RolloutCallback(max_new_tokens=4, val_num_samples=0)],
    )
    data = tiny_datamodule(tiny_world, val_data=str(tiny_world / "heldout.jsonl"), val_size=2)
    trainer.fit(module, datamodule=data)
    with open(tmp_path / "version_0" / "metrics.csv") as handle:
        val_steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("val/accuracy")]
    assert val_steps == [1, 2]  # Lightning logs a validation at the step index of the last batch: steps 2 and 3


def test_the_transformers_engine_keeps_sharded_ranks_in_step(tiny_world):
    """Under FSDP2 every forward is a collective, so a rank whose rollouts all stopped must keep stepping until the
    other ranks' have (transformers' ``synced_gpus``), or they hang. Sharded parameters are DTensors (they have
    ``full_tensor``); one marked so stands in for a shard here, since a real 2-rank run only hangs by chance."""
    from transformers import AutoModelForCausalLM

    from lit_chord.engines import SamplingConfig
    from lit_chord.engines.transformers_engine import TransformersEngine

    policy = AutoModelForCausalLM.from_pretrained(tiny_world / "model")
    calls = []

    def generate(input_ids, synced_gpus, **kwargs):  # records the flag; answers each prompt with its stop token
        calls.append(synced_gpus)
        return torch.cat([input_ids, torch.full((len(input_ids), 1), 2)], dim=1)

    policy.generate = generate
    for sharded in (False, True):
        if sharded:
            next(policy.parameters()).full_tensor = lambda: None
        engine = TransformersEngine()
        engine.attach(policy, [2], pad_token_id=0)
        engine.generate([[5, 6, 7]], 2, SamplingConfig(max_new_tokens=3, seed=0))
    assert calls == [False, True]
