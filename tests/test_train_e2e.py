"""The whole training path on the tiny model: datamodule -> rollout callback -> CHORD step, on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger

from lit_chord.loss import count_normalizers
from lit_chord.module import ChordModule, StepContext
from lit_chord.objectives import Chord
from lit_chord.rollout_callback import RolloutCallback

# How a step was cut into passes, not what it computed: these differ between micro-batchings of the same step.
PASSES = ("train/micro_batches", "train/padding_frac")


class Recorder(Callback):
    """Keeps what each step logged, and the batch it trained on."""

    def __init__(self):
        self.logged, self.batches = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.batches.append(batch)


def datamodule(world, **kwargs):
    args = dict(val_data=str(world / "heldout.jsonl"), system_prompt="sys", val_size=4)
    return tiny_datamodule(world, **{**args, **kwargs})


def fit(world, tmp_path, steps=3, module_kwargs=None, data_kwargs=None, callbacks=()):
    module = ChordModule(
        model=str(world / "model"),
        micro_batch_size=3,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        **(module_kwargs or {}),
        objective=Chord(mu_warmup_steps=2, mu_decay_steps=2, mu_peak=0.8, mu_valley=0.2),
    )
    recorder = Recorder()
    trainer = cpu_trainer(
        max_steps=steps,
        logger=CSVLogger(tmp_path),
        callbacks=[RolloutCallback(max_new_tokens=8), recorder, *callbacks],
    )
    trainer.fit(module, datamodule=datamodule(world, **(data_kwargs or {})))
    return module, recorder


def test_three_steps_train_and_follow_the_mu_schedule(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM

    module, recorder = fit(tiny_world, tmp_path)
    initial = AutoModelForCausalLM.from_pretrained(tiny_world / "model")
    moved = [not torch.equal(p, q) for p, q in zip(module.policy.parameters(), initial.parameters(), strict=True)]
    assert all(moved)
    # warmup 2, decay 2, peak 0.8, valley 0.2, 1-based steps:
    # step 1: 1/2 * 0.8 = 0.4; step 2 (= warmup): 0.8; step 3: (0.8 - 0.2) * 0.5 * (1 + cos(pi/2)) + 0.2 = 0.5
    assert [round(r["train/mu"], 6) for r in recorder.logged] == [0.4, 0.8, 0.5]
    expected = {
        "train/loss",
        "train/loss_rl",
        "train/loss_sft",
        "train/clip_frac",
        "train/entropy",
        "train/grad_norm",
        "rollout/reward_mean",
        "rollout/reward_std",
        "rollout/response_len",
        "rollout/truncated_frac",
        "rollout/zero_std_groups",
        "rollout/gen_seconds",
    }
    assert expected <= set(recorder.logged[0])
    assert all(math.isfinite(v) for r in recorder.logged for v in r.values())


def test_each_step_mixes_expert_rows_and_rollout_groups(tiny_world, tmp_path):
    _, recorder = fit(tiny_world, tmp_path, steps=1)
    batch = recorder.batches[0]
    # 2 prompts x 4 rollouts = 8 rollout rows; expert = ceil(0.2 * 8 / 0.8) = 2 rows.
    assert batch.train.is_expert.tolist() == [True] * 2 + [False] * 8
    assert batch.train.advantages[:2].tolist() == [0.0, 0.0]
    # GRPO advantages sum to zero within each group of 4 (or are all zero).
    assert torch.allclose(batch.train.advantages[2:].view(2, 4).sum(-1), torch.zeros(2), atol=1e-5)


def test_throughput_counts_the_tokens_of_the_rows_that_train(tiny_world, tmp_path):
    _, recorder = fit(tiny_world, tmp_path, steps=1)
    rows, logged = recorder.batches[0].train, recorder.logged[0]
    trained = rows.loss_mask.bool().any(-1)  # truncated rollouts carry no loss token and are not run
    assert logged["train/tokens"] == rows.attention_mask[trained].sum().item()
    assert logged["train/tokens_per_second"] == pytest.approx(logged["train/tokens"] / logged["train/update_seconds"])
    assert "train/mfu" not in logged  # no peak FLOP/s figure for a CPU


def test_expert_rows_never_enter_the_rl_term(tiny_world, tmp_path):
    module, recorder = fit(tiny_world, tmp_path, steps=1)
    rows = recorder.batches[0].train
    norms = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert)
    base = module.micro_batch_loss(rows, StepContext(1, 1.0, 16, rows), norms)
    rows.advantages[rows.is_expert] = 1e3  # nonsense advantages on expert rows must change nothing
    poked = module.micro_batch_loss(rows, StepContext(1, 1.0, 16, rows), norms)
    assert torch.equal(base.loss, poked.loss)


def test_micro_batch_size_does_not_change_the_gradient(tiny_world, tmp_path):
    module, recorder = fit(tiny_world, tmp_path, steps=1)
    rows = recorder.batches[0].train
    norms = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert)
    grads = []
    for micro in (1, 4, len(rows)):
        module.zero_grad()
        for part in rows.micro_batches(micro):
            module.micro_batch_loss(part, StepContext(1, 1.0, 16, part), norms).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and torch.allclose(grads[0], grads[2], atol=1e-6)


def test_generation_is_reproducible_from_seed_and_step(tiny_world, tmp_path):
    _, first = fit(tiny_world, tmp_path / "a", steps=2)
    _, second = fit(tiny_world, tmp_path / "b", steps=2)
    for a, b in zip(first.batches, second.batches, strict=True):
        assert [s.response_ids for s in a.rollouts] == [s.response_ids for s in b.rollouts]


def test_export_loads_with_from_pretrained(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_chord.export import PolicyExport

    export = PolicyExport()
    module, _ = fit(tiny_world, tmp_path, steps=1, callbacks=[export])
    loaded = AutoModelForCausalLM.from_pretrained(export.path)
    for (name, trained), (_, reloaded) in zip(
        module.policy.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(trained, reloaded), name
    assert AutoTokenizer.from_pretrained(export.path).chat_template


def test_logprob_gap_compares_engine_and_trainer_token_by_token(tiny_world, tmp_path):
    from lit_chord.batch import pad_sequences
    from lit_chord.metrics import logprob_gap

    module, recorder = fit(tiny_world, tmp_path, steps=1)
    batch = recorder.batches[0]
    rows = batch.train
    trainer_logprobs, _ = module.token_logprobs(module.scorer, rows, 1.0, with_entropy=False)
    # Give every rollout the trainer's own logprobs of its response tokens, then shift one token by 0.5.
    for index, seq in enumerate(batch.rollouts):
        row = len(batch.expert) + index
        start = len(seq.prompt_ids) - 1
        seq.engine_logprobs = trainer_logprobs[row, start : start + len(seq.response_ids)].tolist()
    batch.rollouts[0].engine_logprobs[0] += 0.5
    rows = pad_sequences(batch.expert + batch.rollouts, pad_id=0)
    norms = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert)
    gap = logprob_gap(trainer_logprobs.detach(), rows, norms)["logprob_gap"]
    # One token off by 0.5 (if rollout 0 kept its tokens) among rl_tokens scored tokens; all others agree to ~1e-7.
    expected = 0.5 / norms.rl_tokens if batch.rollouts[0].loss_on_response else 0.0
    assert float(gap) == pytest.approx(expected, abs=1e-5)


def test_tis_weights_are_the_capped_trainer_over_engine_ratio(tiny_world, tmp_path):
    import math

    module, recorder = fit(tiny_world, tmp_path, steps=1, module_kwargs={"tis_cap": 1.5})
    rows = recorder.batches[0].train
    logprobs, _ = module.token_logprobs(module.scorer, rows, 1.0, with_entropy=False)
    engine = torch.full_like(rows.loss_mask, float("nan"))
    engine[:, :-1] = logprobs.detach() - math.log(2.0)  # the engine is twice less likely: ratio 2, capped at 1.5
    engine[0, 0] = float("nan")  # a token without an engine logprob gets weight 1
    engine[1, 0] = logprobs[1, 0].detach() + math.log(2.0)  # ratio 1/2 stays 1/2
    rows.engine_logprobs = engine
    weights = module.tis_weights(logprobs, rows)
    assert weights[0, 0] == 1.0 and weights[1, 0] == pytest.approx(0.5) and weights[2, 3] == pytest.approx(1.5)
    module.hparams.tis_cap = 0.0
    assert module.tis_weights(logprobs, rows) is None


def test_skipped_and_score_only_rows_change_neither_the_gradient_nor_the_metrics(tiny_world, tmp_path):
    from lit_chord.batch import pad_sequences

    module, recorder = fit(tiny_world, tmp_path, steps=1)
    batch = recorder.batches[0]
    for index, seq in enumerate(batch.rollouts):  # 8 rollouts: advantages 0, .5, -.5, 0, 0, .5, -.5, 0
        seq.loss_on_response = index != 0  # rollout 0 is truncated
        seq.advantage = [0.0, 0.5, -0.5, 0.0][index % 4]
    rows = pad_sequences(batch.expert + batch.rollouts, pad_id=0)
    norms = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert)
    trained, scored = module.split_rows(rows)
    assert (len(trained), len(scored)) == (2 + 4, 3)  # 2 expert rows + rollouts 1, 2, 5, 6; rollouts 3, 4, 7

    def grads() -> torch.Tensor:
        return torch.cat([p.grad.flatten() for p in module.policy.parameters()])

    module.zero_grad()
    whole = module.micro_batch_loss(rows, StepContext(1, 1.0, 16, rows), norms)  # every row, with backward
    whole.loss.backward()
    expected = grads()
    module.zero_grad()
    parts = [module.micro_batch_loss(trained, StepContext(1, 1.0, 16, trained), norms)]
    parts[0].loss.backward()
    with torch.no_grad():
        parts.append(module.micro_batch_loss(scored, StepContext(1, 1.0, 16, scored), norms))
    torch.testing.assert_close(grads(), expected, atol=1e-6, rtol=1e-5)
    for key, value in whole.metrics.items():  # token-mean shares add up; ratio_max is a max, mu a constant
        combined = {"ratio_max": max, "mu": lambda values: values[0]}.get(key, sum)([p.metrics[key] for p in parts])
        torch.testing.assert_close(combined, value, atol=1e-6, rtol=1e-5, msg=key)
    module.objective.entropy_coef = 0.01  # an entropy bonus gives zero-advantage rows a gradient: all of them train
    assert [len(part) for part in module.split_rows(rows)] == [2 + 7, 0]


def test_a_step_with_score_only_rows_equals_one_that_trains_every_row(tiny_world, tmp_path):
    """The whole training step (micro-batches, no-grad passes, metric totals, AdamW) with and without the split."""

    class TrainsEveryRow(ChordModule):
        def split_rows(self, rows):
            return rows.select(rows.loss_mask.bool().any(-1)), rows.select(torch.zeros(len(rows), dtype=torch.bool))

    def digit_share(completion: str, answer: str) -> float:  # varied rewards: some groups equal, some not
        return float(sum(c.isdigit() for c in completion) > 2)

    results = []
    for module_class in (ChordModule, TrainsEveryRow):
        torch.manual_seed(0)
        module = module_class(
            model=str(tiny_world / "model"), micro_batch_size=3, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
        )
        recorder = Recorder()
        rollout = RolloutCallback(max_new_tokens=24, reward_fn=digit_share, scale_advantages_by_std=False)
        trainer = cpu_trainer(max_steps=2, callbacks=[rollout, recorder])
        trainer.fit(module, datamodule=datamodule(tiny_world, prompts_per_step=4))
        results.append((module, recorder))
    (split, split_log), (every, every_log) = results
    scored = [len(split.split_rows(b.train)[1]) for b in split_log.batches]
    assert sum(scored) > 0, "no zero-advantage rollout to score: the test would prove nothing"
    for step in range(2):
        for key, value in every_log.logged[step].items():
            if "seconds" not in key and key not in ("train/tokens_per_second", "train/update_seconds", *PASSES):
                assert split_log.logged[step][key] == pytest.approx(value, abs=1e-5), key
    # AdamW divides by sqrt(v): where a gradient element is ~0, summing rows in another order moves its update by up
    # to ~1e-5 here (lr 1e-2); a row trained or left out would move whole rows of weights by ~lr.
    for a, b in zip(split.policy.parameters(), every.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


class GradientRecorder(Recorder):
    """Also keeps each step's gradient as the optimizer receives it (after clipping)."""

    def __init__(self):
        super().__init__()
        self.gradients = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.gradients.append(torch.cat([p.grad.flatten() for p in pl_module.policy.parameters()]))


def test_token_budget_packing_changes_neither_the_gradient_nor_the_metrics(tiny_world):
    """Two whole steps (no-grad scoring passes, backward passes, metric totals, AdamW) with row micro-batches of 3 and
    with token budgets of 64, 256 and 4096 tokens, padded and padding-free: the same gradients, metrics and weights,
    in other passes."""

    def length_reward(completion: str, answer: str) -> float:  # varied rewards; some groups all 0: score-only rows
        return 0.0 if answer[-1] in "01234" else float(len(completion) % 3)

    runs = []
    cuts = [(None, False), (64, False), (256, False), (4096, False), (64, True), (256, True), (4096, True)]
    for budget, padding_free in cuts:
        torch.manual_seed(0)
        module = ChordModule(
            model=str(tiny_world / "model"),
            micro_batch_size=3,
            max_tokens_per_micro_batch=budget,
            padding_free=padding_free,
            # SGD: weights move by −lr·gradient and agree as the gradients do. AdamW's first step, g / (|g| + eps),
            # would blow the float noise of entries near 0 (the passes sum in other orders) up to lr-sized changes.
            optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        )
        recorder = GradientRecorder()
        rollout = RolloutCallback(EchoEngine(), reward_fn=length_reward, max_new_tokens=8)
        trainer = cpu_trainer(max_steps=2, callbacks=[rollout, recorder])
        trainer.fit(module, datamodule=datamodule(tiny_world, prompts_per_step=4))
        runs.append((module, recorder))
    (rows_module, rows_log), *budgeted = runs
    passes = [[log.logged[step]["train/micro_batches"] for step in range(2)] for _, log in runs]
    assert len({tuple(p) for p in passes[:4]}) == 4, passes  # four different padded cuts of the same steps
    assert len({tuple(p) for p in passes[4:]}) > 1, passes  # and several padding-free ones
    assert all(log.logged[step]["train/padding_frac"] == 0 for _, log in runs[4:] for step in range(2))
    assert sum(len(rows_module.split_rows(b.train)[1]) for b in rows_log.batches) > 0, "no score-only rows"
    for module, log in budgeted:
        for step in range(2):
            torch.testing.assert_close(log.gradients[step], rows_log.gradients[step], atol=1e-6, rtol=1e-5)
            for key, value in rows_log.logged[step].items():
                if "seconds" not in key and key not in ("train/tokens_per_second", *PASSES):
                    assert log.logged[step][key] == pytest.approx(value, abs=1e-5), key
        for a, b in zip(module.policy.parameters(), rows_module.policy.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
