"""Held-out metrics: the unbiased pass@k estimator by hand, and named held-out sets end to end on the tiny model.
Rollout metrics: ranks' partial sums combined by hand."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers import cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger

from lit_chord.batch import ValResult
from lit_chord.datamodule import ChordDataModule
from lit_chord.engines import Completion
from lit_chord.errors import ConfigError
from lit_chord.held_out import val_set_sources
from lit_chord.metrics import HeldOutMetrics, RolloutSums, pass_at_k, step_rollout_metrics
from lit_chord.module import ChordModule
from lit_chord.objectives import Grpo
from lit_chord.protocol import SetProtocol, protocols
from lit_chord.rollout_callback import RolloutCallback, Scores, rollout_sums


def rank_sums(rewards, formats, lengths, finished, errors=0, group_size=2) -> RolloutSums:
    """One rank's ``RolloutSums`` from its rollouts (in groups of 2 unless told); a reward of 1 is a right answer."""
    scores = Scores(torch.tensor(rewards), torch.tensor(rewards), torch.tensor(formats), errors)
    completions = [Completion([7] * n, done) for n, done in zip(lengths, finished, strict=True)]
    return rollout_sums(scores, completions, group_size)


def test_rollout_metrics_add_up_the_ranks_sums_not_their_means():
    """Rank 0: groups [1, 1] and [0, 1]; rank 1: the group [0, 0] and a reward function that failed once."""
    rank0 = rank_sums([1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, math.nan], [2, 4, 6, 8], [True, True, True, False])
    rank1 = rank_sums([0.0, 0.0], [1.0, 1.0], [3, 5], [True, False], errors=1)
    rank0.expert_traces, rank0.expert_trace_reward = 2.0, 1.0  # LUFFY: 2 traces, one right
    rank1.expert_traces, rank1.expert_trace_reward = 1.0, 1.0
    timings = torch.tensor([[0.5, 0.1], [2.0, 0.0]], dtype=torch.float64)  # gen, sync seconds per rank
    per_rank = torch.cat([torch.stack([rank0.as_tensor(), rank1.as_tensor()]), timings], dim=1)
    metrics = step_rollout_metrics(per_rank, ["gen_seconds", "sync_seconds"])
    assert metrics == pytest.approx(
        {
            "rollout/reward_mean": 0.5,  # 3 / 6, not the ranks' (0.75 + 0) / 2
            "rollout/reward_std": math.sqrt(0.3),  # (Σr² − (Σr)²/n) / (n − 1) = (3 − 9/6) / 5, unbiased
            "rollout/accuracy": 0.5,  # 3 right of 6
            "rollout/format_ok": 0.6,  # 3 well formed of the 5 judged, not (1/3 + 1) / 2
            "rollout/response_len": 28 / 6,  # (2 + 4 + 6 + 8 + 3 + 5) / 6
            "rollout/tokens": 28.0,  # generated on both ranks
            "rollout/truncated_frac": 2 / 6,
            "rollout/zero_std_groups": 2.0,  # [1, 1] on rank 0 and [0, 0] on rank 1
            "rollout/reward_errors": 1.0,
            "rollout/expert_trace_reward": 2 / 3,  # 2 right of 3 traces, not (1/2 + 1) / 2
            "rollout/gen_seconds": 2.0,  # the slowest rank's: the step waits for it
            "rollout/sync_seconds": 0.1,
        },
        abs=1e-12,
    )
    assert torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]).std().item() == pytest.approx(math.sqrt(0.3))  # as torch's
    one_rank = rank_sums(
        [1.0, 1.0, 0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, math.nan, 1.0, 1.0], [2, 4, 6, 8, 3, 5], [True, True] * 3
    )
    one_rank.truncated, one_rank.reward_errors = 2.0, 1.0
    one_rank.expert_traces, one_rank.expert_trace_reward = 3.0, 2.0
    summed = {key: value for key, value in metrics.items() if not key.endswith("_seconds")}
    assert summed == pytest.approx(one_rank.metrics(), abs=1e-12)  # as if one rank had them all


def test_a_single_rollout_has_no_std_and_a_plain_reward_no_format():
    metrics = rank_sums([0.7], [math.nan], [3], [True], group_size=1).metrics()
    assert metrics["rollout/reward_std"] == 0.0 and metrics["rollout/zero_std_groups"] == 0.0
    assert "rollout/format_ok" not in metrics
    assert "rollout/expert_trace_reward" not in metrics


def test_pass_at_k_by_hand():
    # n = 5 samples, c = 2 correct.
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # k = 1: c / n = 2/5
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 4) == 1.0  # n - c = 3 < k: every draw of 4 holds a correct one
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0  # k = n: "any correct"
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


def test_held_out_metrics_average_over_prompts():
    metrics = HeldOutMetrics(num_samples=4, pass_k=4)
    metrics.update(
        [
            ValResult(greedy_correct=1.0, greedy_length=4, sample_correct=[1, 0, 0, 1], pass_at_k=0.5),
            ValResult(greedy_correct=0.0, greedy_length=8, sample_correct=[0, 0, 0, 0], pass_at_k=0.0),
        ]
    )
    assert metrics.greedy_acc.compute() == 0.5  # (1 + 0) / 2
    assert metrics.avg_at_k.compute() == 0.25  # (2/4 + 0/4) / 2
    assert metrics.pass_at_k.compute() == 0.25  # (0.5 + 0) / 2
    assert metrics.response_len.compute() == 6.0  # (4 + 8) / 2
    assert [suffix for suffix, _, _ in metrics.updated()] == ["greedy_acc", "avg@4", "pass@4", "response_len"]


def test_greedy_only_logs_no_sample_metrics():
    metrics = HeldOutMetrics()
    metrics.update([ValResult(greedy_correct=1.0, greedy_length=3)])
    assert [suffix for suffix, _, _ in metrics.updated()] == ["greedy_acc", "response_len"]


def test_val_pass_k_must_fit_the_samples():
    with pytest.raises(ValueError, match="val_pass_k"):
        RolloutCallback(val_num_samples=4, val_pass_k=5)
    with pytest.raises(ValueError, match="val_pass_k"):
        RolloutCallback(val_num_samples=0, val_pass_k=1)
    with pytest.raises(ValueError, match=r"val_num_samples\['amc'\] must be >= 0"):
        RolloutCallback(val_num_samples={"amc": -1})


def test_each_set_gets_its_own_samples_and_k():
    """The paper's protocol: AIME avg@32, AMC avg@8, MMLU-Pro greedy; a set the mapping leaves out is greedy only."""
    sets = ["aime24", "amc", "mmlu_pro", "math500"]
    got = protocols({"aime24": 32, "amc": 8, "mmlu_pro": 0}, {"amc": 4}, sets)
    assert got == {
        "aime24": SetProtocol(32, 32),  # k defaults to n
        "amc": SetProtocol(8, 4),
        "mmlu_pro": SetProtocol(0, 0),
        "math500": SetProtocol(0, 0),  # not named: greedy only
    }
    assert protocols(5, 2, ["a", "b"]) == {"a": SetProtocol(5, 2), "b": SetProtocol(5, 2)}
    assert protocols(5, None, ["a"]) == {"a": SetProtocol(5, 5)}
    with pytest.raises(ConfigError, match="'aime42', which is not a held-out set"):
        protocols({"aime42": 32}, None, sets)
    with pytest.raises(ConfigError, match="set 'amc' must lie in \\[1, 8\\]"):
        protocols({"amc": 8}, {"amc": 9}, sets)


def test_val_sets_are_named():
    assert val_set_sources("d/heldout.jsonl") == {"heldout": "d/heldout.jsonl"}
    assert val_set_sources(["d/a.jsonl", "org/math:test"]) == {"a": "d/a.jsonl", "math": "org/math:test"}
    assert val_set_sources({"x": "d/a.jsonl"}) == {"x": "d/a.jsonl"}
    assert val_set_sources(None) == {}
    with pytest.raises(ValueError, match="both be named 'a'"):
        val_set_sources(["d/a.jsonl", "e/a.jsonl"])
    with pytest.raises(ValueError, match="set name"):
        val_set_sources({"a/b": "d/a.jsonl"})


class ResultRecorder(Callback):
    def __init__(self):
        self.results: dict[int, list[ValResult]] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.results.setdefault(dataloader_idx, []).extend(batch.results)


def test_named_sets_log_their_own_metrics(tiny_world, tmp_path):
    """Two held-out sets -> two dataloaders -> val/<set>/... each; val/accuracy is the first set's greedy."""
    data = ChordDataModule(
        tokenizer=str(tiny_world / "model"),
        prompt_data=str(tiny_world / "prompts.jsonl"),
        val_data={"heldout": str(tiny_world / "heldout.jsonl"), "train": str(tiny_world / "prompts.jsonl")},
        prompts_per_step=2,
        num_generations=2,
        expert_data_ratio=0.0,
        system_prompt=None,
        max_prompt_length=64,
        val_size=3,
    )
    module = ChordModule(model=str(tiny_world / "model"), objective=Grpo())
    recorder = ResultRecorder()
    trainer = cpu_trainer(
        limit_val_batches=1.0,
        max_steps=1,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        logger=CSVLogger(tmp_path, name=""),
        callbacks=[RolloutCallback(max_new_tokens=6, val_num_samples=3, val_pass_k=2), recorder],
    )
    trainer.fit(module, datamodule=data)
    with open(tmp_path / "version_0" / "metrics.csv") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r.get("val/accuracy")]
    for index, name in enumerate(["heldout", "train"]):
        results = recorder.results[index]
        assert len(results) == 3
        expected = {
            "greedy_acc": sum(r.greedy_correct for r in results) / 3,
            "avg@3": sum(sum(r.sample_correct) / 3 for r in results) / 3,
            "pass@2": sum(pass_at_k(3, int(sum(r.sample_correct)), 2) for r in results) / 3,
            "response_len": sum(r.greedy_length for r in results) / 3,
        }
        for suffix, value in expected.items():
            assert float(row[f"val/{name}/{suffix}"]) == pytest.approx(value), (name, suffix)
    assert float(row["val/accuracy"]) == float(row["val/heldout/greedy_acc"])
    assert not any("dataloader_idx" in key for key in row)
    assert torch.isfinite(torch.tensor(float(row["val/train/response_len"])))


class ReversingEngine:
    """Answers ``Reverse 472.`` right: greedy as a bare ``\\boxed{274}`` (no <think> tags), samples alternately
    with tags and right, and with tags and wrong (the digits copied)."""

    uses_live_policy = False

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def attach(self, policy, stop_token_ids, pad_token_id):
        self.stop = stop_token_ids[0]

    def generate(self, prompt_ids, n, sampling):
        groups = []
        for ids in prompt_ids:
            digits = self.tokenizer.decode(ids).split("Reverse ")[1].split(".")[0]
            if sampling.temperature == 0.0:
                texts = [f"\\boxed{{{digits[::-1]}}}"] * n
            else:
                texts = [f"<think>x</think>\\boxed{{{digits[::-1] if j % 2 == 0 else digits}}}" for j in range(n)]
            groups.append([Completion(self.tokenizer(t)["input_ids"] + [self.stop], True) for t in texts])
        return groups

    def load_weights(self, named_tensors):
        pass


def test_validation_accuracy_counts_right_answers_without_tags(tiny_world):
    """The greedy answers are right but untagged (math_boxed reward 0.9): accuracy 1 (it was 0 when accuracy meant
    reward >= 1), format_ok 0. Samples: 2 of 4 right, all tagged: avg@4 = 0.5, pass@2 = 1 − C(2,2)/C(4,2) = 5/6."""
    from transformers import AutoTokenizer

    data = tiny_datamodule(tiny_world, val_data=str(tiny_world / "heldout.jsonl"), val_size=5)
    engine = ReversingEngine(AutoTokenizer.from_pretrained(tiny_world / "model"))
    module = ChordModule(model=str(tiny_world / "model"))
    trainer = cpu_trainer(limit_val_batches=1.0, callbacks=[RolloutCallback(engine, val_num_samples=4, val_pass_k=2)])
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    assert metrics["val/heldout/greedy_acc"] == 1.0
    assert metrics["val/heldout/format_ok"] == 0.0
    assert metrics["val/heldout/avg@4"] == 0.5
    assert metrics["val/heldout/pass@2"] == pytest.approx(5 / 6)
    assert metrics["val/accuracy"] == 1.0
