"""What one optimizer step means on the paths real runs take: the reference's defaults, the constant horizon of
seq-mean-token-sum-norm, gradient clipping under 16-mixed, truncated importance sampling's bounds, and a final
validation of the final weights."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision

from lit_chord.module import ChordModule
from lit_chord.objectives import Chord
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


def test_the_default_objective_is_the_references_chord_phi():
    # Trinity-RFT mix_chord defaults: mu_warmup_steps 0, mu_decay_steps 0, mu_peak 0.1, mu_valley 0.1, φ on; KL k2.
    settings = vars(ChordModule(model="x").objective)
    chord_phi = {"mu_warmup_steps": 0, "mu_decay_steps": 0, "mu_peak": 0.1, "mu_valley": 0.1, "token_weighting": "phi"}
    assert {k: settings[k] for k in chord_phi} == chord_phi
    assert settings["kl_estimator"] == "k2" and settings["clip_low"] == settings["clip_high"] == 0.2


def test_seq_mean_token_sum_norm_divides_by_the_generation_budget(tiny_world):
    """μ = 0 and ratio 1, so each rollout token's loss is −A: loss_rl = Σ_rows (−A·n_row) / (rows · max_new_tokens).
    The horizon was the step's padded width − 1, which changes from step to step and from rank to rank."""
    module, keep = one_step(
        tiny_world,
        max_new_tokens=12,
        objective=Chord(mu_valley=0.0, rl_loss_agg="seq-mean-token-sum-norm"),
        micro_batch_size=3,
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


def test_the_final_weights_are_validated_and_every_log_row_sits_at_its_optimizer_step(tiny_world, tmp_path):
    """3 steps, validation every 2, the sanity check over the whole set: validations at steps 0 (before training), 2
    and 3 (the last step, though off the interval); training rows at 1, 2, 3. Lightning alone logged the validations
    at 1 (the last batch's index) and the training rows at 0, 1, 2, never the sanity check, nor a final one."""
    module = ChordModule(model=str(tiny_world / "model"), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer = cpu_trainer(
        max_steps=3,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0,
        num_sanity_val_steps=-1,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name=""),
        callbacks=[RolloutCallback(EchoEngine(), max_new_tokens=4, val_num_samples=0)],
    )
    data = tiny_datamodule(tiny_world, val_data=str(tiny_world / "heldout.jsonl"), val_size=3)
    trainer.fit(module, datamodule=data)
    with open(tmp_path / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r.get("val/accuracy")] == [0, 2, 3]
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [1, 2, 3]
    before = next(r for r in rows if r.get("val/accuracy") and int(r["step"]) == 0)
    assert float(before["val/heldout/count"]) == 3.0 and float(before["val/accuracy"]) == module.held_out.before


class BarState(Callback):
    """Where the step bar stands when training starts and at the end."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(self, "start"):
            self.start = self.task(trainer).completed

    def on_train_end(self, trainer, pl_module):
        self.end = self.task(trainer)

    @staticmethod
    def task(trainer):
        bar = trainer.progress_bar_callback
        return bar.progress.tasks[bar.train_progress_bar_id]


def test_the_progress_bar_counts_optimizer_steps_across_a_resume(tiny_world, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_chord.progress import StepProgressBar

    def run(steps, ckpt_path=None):
        state = BarState()
        trainer = cpu_trainer(
            max_steps=steps,
            enable_progress_bar=True,
            enable_checkpointing=True,
            callbacks=[
                RolloutCallback(EchoEngine(), max_new_tokens=4),
                StepProgressBar(),
                ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1),
                state,
            ],
        )
        module = ChordModule(model=str(tiny_world / "model"), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
        trainer.fit(module, datamodule=tiny_datamodule(tiny_world), ckpt_path=ckpt_path)
        return state, trainer

    first, _ = run(2)
    assert (first.start, first.end.completed, first.end.total) == (0, 2, 2)
    resumed, trainer = run(4, ckpt_path=str(tmp_path / "last.ckpt"))
    assert (resumed.start, resumed.end.completed, resumed.end.total) == (2, 4, 4)  # was 0 -> 2 of 2 ("4/2")
    assert resumed.end.description.strip().endswith("step")
    assert "v_num" not in trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)


def test_cosine_decay_by_hand_and_it_follows_the_run_length(tiny_world):
    from functools import partial

    from lit_chord.schedules import CosineDecay

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = CosineDecay(optimizer, min_ratio=0.1, total_steps=4)
    # 0.1 + 0.9·½(1 + cos(π·t/4)): t = 0 → 1, t = 2 → 0.55, t = 4 → 0.1, then flat
    assert [schedule.factor(t) for t in (0, 2, 4, 9)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    for scheduler, steps in [(partial(CosineDecay, min_ratio=0.1), 3), (partial(CosineDecay, total_steps=7), 7)]:
        module = ChordModule(model=str(tiny_world / "model"), lr_scheduler=scheduler)
        cpu_trainer(max_steps=3, callbacks=[RolloutCallback(EchoEngine(), max_new_tokens=4)]).fit(
            module, datamodule=tiny_datamodule(tiny_world)
        )
        assert module.lr_schedulers().total_steps == steps  # null follows max_steps = 3; a pinned 7 stays


def test_a_pinned_schedule_length_that_is_not_the_runs_warns(tiny_world):
    from functools import partial

    module = ChordModule(
        model=str(tiny_world / "model"), lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=600)
    )
    trainer = cpu_trainer(max_steps=2, callbacks=[RolloutCallback(EchoEngine(), max_new_tokens=4)])
    with pytest.warns(UserWarning, match="spans 600 steps but trainer.max_steps is 2"):
        trainer.fit(module, datamodule=tiny_datamodule(tiny_world))


def test_a_mu_schedule_longer_than_the_run_warns(tiny_world):
    module = ChordModule(
        model=str(tiny_world / "model"),
        objective=Chord(mu_warmup_steps=1, mu_decay_steps=3, mu_peak=0.9, mu_valley=0.1),
    )
    trainer = cpu_trainer(max_steps=2, callbacks=[RolloutCallback(EchoEngine(), max_new_tokens=4)])
    # The last step, 2: (2 - 1) / 3 of the decay, (0.9 - 0.1) * 0.5 * (1 + cos(π/3)) + 0.1 = 0.8 * 0.75 + 0.1 = 0.7
    with pytest.warns(
        UserWarning, match=r"the μ schedule spans 4 steps .* but trainer.max_steps is 2: μ ends at 0.70, "
    ):
        trainer.fit(module, datamodule=tiny_datamodule(tiny_world))


def test_a_run_says_what_it_uses_and_warns_about_the_demo_held_out_set(tiny_world, tmp_path, caplog):
    from lit_chord.summary import DEMO_DATA, RunSummary

    data = tiny_datamodule(tiny_world, val_data=str(DEMO_DATA / "heldout.jsonl"), val_size=2)
    module = ChordModule(
        model=str(tiny_world / "model"), objective=Chord(mu_peak=0.9, mu_valley=0.05, mu_decay_steps=300)
    )
    trainer = cpu_trainer(max_steps=1, callbacks=[RolloutCallback(EchoEngine(), max_new_tokens=4), RunSummary()])
    with pytest.warns(UserWarning, match="still the demo's held-out set"), caplog.at_level("INFO"):
        trainer.fit(module, datamodule=data)
    summary = caplog.text
    for expected in [
        f"model:      {tiny_world / 'model'}",
        "parameters: {0:,} ({0:,} trained)".format(sum(p.numel() for p in module.policy.parameters())),
        f"prompts:    {tiny_world / 'prompts.jsonl'}: {len(data.prompts)} kept",
        "held-out:   heldout (2 prompts)",
        "objective:  CHORD, μ 0.9 → 0.05 over 300 steps, token weighting phi",
        "each step:  2 prompts x 4 rollouts + 2 expert",
        "rollouts:   EchoEngine, temperature 1, at most 4 new tokens",
        "steps:      1",
    ]:
        assert expected in summary


def test_the_objective_is_saved_and_logged_by_value(tiny_world, tmp_path):
    """hparams.yaml (what loggers record) and the checkpoint's hyper-parameters hold the objective as a config writes
    it, class_path and init_args, whether it came from a config or from Python."""
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    module = ChordModule(model=str(tiny_world / "model"), objective=Chord(mu_peak=0.3, mu_valley=0.2))
    expected = {"class_path": "lit_chord.objectives.chord.Chord", "init_args": vars(module.objective)}
    assert module.hparams["objective"] == expected
    trainer = cpu_trainer(max_steps=1, logger=CSVLogger(tmp_path), callbacks=[RolloutCallback(EchoEngine())])
    trainer.fit(module, datamodule=tiny_datamodule(tiny_world))
    logged = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert logged["objective"] == expected
