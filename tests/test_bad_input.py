"""Bad input fails at start-up with a message naming the file, line (or record) and field, or is counted and
skipped; bad rewards and non-finite gradients are counted and the run goes on.

The corpus lives in ``tests/data/bad/``: ``prompts_*`` files are used as ``data.prompt_data``, ``expert_*`` files
as ``data.expert_data``, ``config_*.yaml`` files are layered on ``configs/demo.yaml``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import NanGradient, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback

from lit_chord.__main__ import main
from lit_chord.datamodule import ChordDataModule, DataError
from lit_chord.engines import Completion
from lit_chord.loss import group_advantages
from lit_chord.module import ChordModule
from lit_chord.rollout_callback import RolloutCallback, Scores, rollout_sums

BAD = Path(__file__).parent / "data" / "bad"
REPO = Path(__file__).parent.parent

# file -> what the error must say (a regex); the file name itself is checked separately for data files.
REJECTED = {
    "prompts_malformed_line.jsonl": r"prompts_malformed_line\.jsonl:3: malformed JSON \(Expecting value",
    "prompts_malformed.json": r"prompts_malformed\.json:3:30: malformed JSON \(Expecting ',' delimiter\)",
    "prompts_not_an_object.jsonl": r"prompts_not_an_object\.jsonl:2: expected a JSON object, got an array",
    "prompts_array_of_strings.json": r"prompts_array_of_strings\.json: record 1: expected a JSON object, got a string",
    "prompts_not_utf8.jsonl": r"prompts_not_utf8\.jsonl:2: not UTF-8 \(byte 0xff",
    "prompts_not_utf8.json": r"prompts_not_utf8\.json:1: not UTF-8 \(byte 0xff",
    "prompts_empty.jsonl": r"prompts_empty\.jsonl: no records",
    "prompts_blank_lines_only.jsonl": r"prompts_blank_lines_only\.jsonl: no records",
    "prompts_missing_problem.jsonl": r"prompts_missing_problem\.jsonl:1: field 'problem' missing; expected a string",
    "prompts_missing_answer.jsonl": r"prompts_missing_answer\.jsonl:2: field 'answer' missing; expected a string",
    "prompts_null_answer.jsonl": r"prompts_null_answer\.jsonl:2: field 'answer' is null; expected a string",
    "prompts_list_answer.jsonl": r"prompts_list_answer\.jsonl:2: field 'answer' is an array; expected a string",
    "prompts_empty_problem.jsonl": r"prompts_empty_problem\.jsonl:1: field 'problem' is empty",
    "prompts_all_too_long.jsonl": r"prompts_all_too_long\.jsonl: no prompt fits max_prompt_length=64",
    "expert_messages_as_string.jsonl": (
        r"expert_messages_as_string\.jsonl:1: field 'messages' must be a list of .* got a string \(JSON-encoded"
    ),
    "expert_no_assistant_turn.jsonl": r"expert_no_assistant_turn\.jsonl:2: no assistant turn .*role 'user'",
    "expert_no_messages.jsonl": r"expert_no_messages\.jsonl:1: field 'messages' is empty",
    "expert_unknown_role.jsonl": r"expert_unknown_role\.jsonl:1: message 2: unknown chat role 'bot'",
    "expert_missing_role.jsonl": r"expert_missing_role\.jsonl:1: message 1: 'role' missing",
    "expert_null_content.jsonl": r"expert_null_content\.jsonl:1: message 1: 'content' must be a string, got null",
    "expert_missing_content.jsonl": r"expert_missing_content\.jsonl:1: message 1: 'content' missing$",
    "expert_empty_response.jsonl": r"expert_empty_response\.jsonl:1: empty assistant response",
    "expert_blank_response.jsonl": r"expert_blank_response\.jsonl:1: empty assistant response",
    "expert_neither_format.jsonl": (
        r"expert_neither_format\.jsonl:1: expected field 'messages' .* found 'question', 'solution'"
    ),
    "expert_response_not_a_string.jsonl": (
        r"expert_response_not_a_string\.jsonl:1: field 'response' is a number; expected a string"
    ),
    "expert_all_too_long.jsonl": r"expert_all_too_long\.jsonl: no expert sample fits max_prompt_length=64",
}
FILTERED = {
    "prompts_some_too_long.jsonl": {"prompt_data": {"max_prompt_length": 1}},
    "expert_some_too_long.jsonl": {"expert_data": {"max_response_length": 1}},
}
CONFIGS = {
    "config_unknown_key.yaml": "mu_peek",
    "config_wrong_type.yaml": "data.prompts_per_step",
    "config_mu_out_of_range.yaml": "model.objective.mu_valley must lie in [0, 1]",
    "config_negative_steps.yaml": "model.objective.mu_decay_steps must be >= 0",
    "config_expert_ratio_one.yaml": "data.expert_data_ratio must lie in [0, 1)",
    "config_zero_prompt_length.yaml": "data.max_prompt_length must be >= 1",
    "config_negative_max_steps.yaml": "max_steps` must be a non-negative integer or -1",
}


@pytest.fixture(scope="module")
def good_prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"problem": f"Reverse {i}{i}1.", "answer": f"1{i}{i}"}) + "\n" for i in range(8))
    )
    return path


def make_dm(world: Path, **kwargs) -> ChordDataModule:
    args = dict(
        tokenizer=str(world / "model"),
        prompts_per_step=2,
        num_generations=2,
        system_prompt=None,
        max_prompt_length=64,
        max_response_length=32,
    )
    dm = ChordDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def stream_args(name: str, good_prompts: Path) -> dict:
    path = str(BAD / name)
    return (
        {"prompt_data": path} if name.startswith("prompts") else {"prompt_data": str(good_prompts), "expert_data": path}
    )


def test_every_file_of_the_corpus_has_a_test():
    assert {p.name for p in BAD.iterdir()} == set(REJECTED) | set(FILTERED) | set(CONFIGS)


@pytest.mark.parametrize("name", sorted(REJECTED), ids=str)
def test_bad_data_is_rejected_naming_file_line_and_field(tiny_world, good_prompts, name):
    with pytest.raises(DataError, match=REJECTED[name]):
        make_dm(tiny_world, **stream_args(name, good_prompts))


@pytest.mark.parametrize("name", sorted(FILTERED), ids=str)
def test_overlong_records_are_filtered_and_counted(tiny_world, good_prompts, name):
    dm = make_dm(tiny_world, **stream_args(name, good_prompts))
    assert dm.filtered == FILTERED[name]
    if name.startswith("prompts"):  # the numeric answer 654 is kept, as a string
        assert [p.answer for p in dm.prompts] == ["321", "654"]
    else:
        assert len(dm.expert) == 1


@pytest.mark.parametrize("name", sorted(CONFIGS), ids=str)
def test_bad_config_is_rejected_at_start_up_naming_the_key(monkeypatch, capsys, name):
    monkeypatch.chdir(REPO)
    args = ["--config", "configs/demo.yaml", "--config", str(BAD / name), "--trainer.logger", "false"]
    with pytest.raises((Exception, SystemExit)) as info:
        main(args, run=False)
    message = str(info.value) if not isinstance(info.value, SystemExit) else capsys.readouterr().err
    assert CONFIGS[name] in message


def test_missing_and_unsupported_files_are_named(tiny_world, tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        make_dm(tiny_world, prompt_data=str(tmp_path / "nope.jsonl"))
    (tmp_path / "prompts.csv").write_text("problem,answer\n")
    with pytest.raises(DataError, match=r"prompts\.csv: unsupported file type '\.csv'"):
        make_dm(tiny_world, prompt_data=str(tmp_path / "prompts.csv"))


@pytest.mark.parametrize(
    ("path", "command"),
    [
        ("data/openr1/rl_train.jsonl", "python -m lit_chord.data openr1 --out data/openr1"),
        ("data/toolace/heldout.jsonl", "python -m lit_chord.data toolace --out data/toolace"),
        ("data/eval/aime24.jsonl", "python -m lit_chord.data bench aime24 --out data/eval"),
        ("/big/disk/data/openr1/sft.jsonl", "python -m lit_chord.data openr1 --out /big/disk/data/openr1"),
        ("data/mine/train.jsonl", None),
        ("openr1/rl_train.jsonl", None),
    ],
)
def test_a_missing_file_of_the_papers_data_names_the_command_that_prepares_it(path, command):
    from lit_chord.records import located_records, preparation_hint

    hint = preparation_hint(path)
    assert (hint is None) if command is None else hint.startswith(f"prepare it with `{command}`")
    with pytest.raises(DataError, match="file not found") as missing:
        located_records(path)
    assert missing.value.hint == hint


def test_tricky_but_valid_json_loads(tiny_world, tmp_path):
    """What the stricter reader must still accept: blank lines, CRLF, a BOM, U+2028 inside a string, numbers as
    answers, JSON Lines in a .json file, a JSON array, one pretty-printed object."""
    records = [{"problem": "Reverse 123.", "answer": 321}, {"problem": "Reverse\u2028456.", "answer": "654"}]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    files = {
        "lines.jsonl": "\ufeff" + lines[0] + "\r\n\r\n  \n" + lines[1] + "\n",
        "lines.json": "\n".join(lines),
        "array.json": json.dumps(records, indent=2, ensure_ascii=False),
        "object.json": json.dumps(records[1], indent=2, ensure_ascii=False),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        answers = [p.answer for p in make_dm(tiny_world, prompt_data=str(tmp_path / name)).prompts]
        assert answers == (["654"] if name == "object.json" else ["321", "654"]), name


def test_tokenizer_without_chat_template_is_rejected(tiny_world, tmp_path, good_prompts):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "model")
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "plain")
    with pytest.raises(DataError, match="has no chat template"):
        make_dm(tiny_world, tokenizer=str(tmp_path / "plain"), prompt_data=str(good_prompts))


# ----- rewards ------------------------------------------------------------------------------------------------------
def raises(completion, answer):
    raise ZeroDivisionError("bug in the reward function")


@pytest.mark.parametrize(
    "reward_fn",
    [raises, lambda c, a: float("nan"), lambda c, a: float("inf"), lambda c, a: None, lambda c, a: "1.0"],
    ids=["raises", "nan", "inf", "none", "string"],
)
def test_bad_reward_is_scored_zero_and_counted(tiny_world, reward_fn):
    from transformers import AutoTokenizer

    callback = RolloutCallback(reward_fn=lambda c, a: 1.0 if c == "good" else reward_fn(c, a))
    callback.tokenizer = AutoTokenizer.from_pretrained(tiny_world / "model")
    good, bad = callback.tokenizer("good")["input_ids"], callback.tokenizer("bad")["input_ids"]
    groups = [[Completion(good, True), Completion(bad, True)], [Completion(bad, True), Completion(good, True)]]
    scores = callback.score(groups, ["x", "y"])
    assert scores.rewards.tolist() == [1.0, 0.0, 0.0, 1.0] and scores.errors == 2
    assert scores.accuracy.tolist() == [1.0, 0.0, 0.0, 1.0]  # a plain 1.0 is a right answer, a failure is not


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_all_equal_rewards_give_zero_advantages_and_are_counted(scale_by_std):
    rewards = torch.tensor([0.7] * 8 + [-0.1] * 8)  # two groups of 8, each constant (0.7 is not exact in binary)
    advantages = group_advantages(rewards, 8, scale_by_std=scale_by_std)
    assert torch.equal(advantages, torch.zeros(16))
    scores = Scores(rewards, accuracy=torch.zeros(16), format_ok=torch.full((16,), math.nan), errors=0)
    metrics = rollout_sums(scores, [Completion([1], True)] * 16, 8).metrics()
    assert metrics["rollout/zero_std_groups"] == 2.0 and all(math.isfinite(v) for v in metrics.values())


# ----- whole runs ---------------------------------------------------------------------------------------------------
class Recorder(Callback):
    """What each step logged, the batch, and whether the step left the weights untouched."""

    def __init__(self) -> None:
        self.logged, self.batches, self.unchanged = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.policy.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.batches.append(batch)
        after = list(pl_module.policy.parameters())
        self.unchanged.append(all(torch.equal(a, b) for a, b in zip(self.before, after, strict=True)))


def tiny_fit(world, good_prompts, steps, callbacks=(), reward_fn=None, profiler=None, **module_kwargs):
    module = ChordModule(
        model=str(world / "model"),
        micro_batch_size=4,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        **module_kwargs,
    )
    recorder = Recorder()
    rollout = RolloutCallback(max_new_tokens=6, **({"reward_fn": reward_fn} if reward_fn else {}))
    trainer = cpu_trainer(
        max_steps=steps,
        profiler=profiler,
        callbacks=[rollout, recorder, *callbacks],
    )
    dm = tiny_datamodule(world, prompt_data=str(good_prompts))
    trainer.fit(module, datamodule=dm)
    return trainer, module, recorder


def test_a_run_survives_a_reward_function_that_always_fails(tiny_world, good_prompts):
    trainer, _, recorder = tiny_fit(tiny_world, good_prompts, steps=1, reward_fn=raises)
    logged, batch = recorder.logged[0], recorder.batches[0]
    assert trainer.global_step == 1
    assert logged["rollout/reward_errors"] == 8.0  # 2 prompts x 4 rollouts, all scored 0
    assert logged["rollout/zero_std_groups"] == 2.0  # so every group is constant
    assert torch.equal(batch.train.advantages, torch.zeros(len(batch.train)))
    assert all(math.isfinite(v) for v in logged.values())


def test_a_non_finite_gradient_skips_the_update_and_is_counted(tiny_world, good_prompts):
    # The simple profiler fails loudly if the skipped step does not pair Lightning's before/after-step hooks.
    trainer, module, recorder = tiny_fit(
        tiny_world,
        good_prompts,
        steps=3,
        callbacks=[NanGradient({2})],
        profiler="simple",
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
    )
    assert trainer.global_step == 3  # the skipped step still counts: μ and the streams stay aligned
    assert recorder.unchanged == [False, True, False]  # the weights did not move at step 2
    assert [r["train/skipped_steps"] for r in recorder.logged] == [0.0, 1.0, 1.0]
    assert math.isnan(recorder.logged[1]["train/grad_norm"])
    expected_mu = [module.objective.mu(s) for s in (1, 2, 3)]
    assert [r["train/mu"] for r in recorder.logged] == pytest.approx(expected_mu)
    # The LR each step used: 1e-2 halved once per step, the skipped one included (it follows global_step as μ does).
    assert [r["train/lr"] for r in recorder.logged] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    optimizer_state = next(iter(module.optimizers().optimizer.state.values()))
    assert optimizer_state["step"] == 2  # AdamW stepped twice, not three times (no moment update at step 2)
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.total
    assert (progress.ready, progress.completed) == (3, 3)


def test_consecutive_non_finite_steps_stop_the_run(tiny_world, good_prompts):
    with pytest.raises(RuntimeError, match=re.escape("2 consecutive updates had a non-finite loss or gradient norm")):
        tiny_fit(tiny_world, good_prompts, steps=5, callbacks=[NanGradient({1, 2, 3})], max_consecutive_skips=2)
