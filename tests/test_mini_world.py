"""The miniature's pretrained policy and data: the shipped files regenerate, the splits are disjoint, the prompt is
not trained on, and the shipped policy scores what its ``pretraining.json`` says."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_chord.experiments import mini_tasks
from lit_chord.experiments.mini_world import (
    TARGET,
    TARGET_PRETRAIN,
    encode,
    greedy_accuracy,
    pretraining_texts,
    write_data,
)

MINI = Path(__file__).parent.parent / "data" / "mini"
GENERAL = list(mini_tasks.GENERAL)
GENERAL_FILES = [f"general_{task}.jsonl" for task in GENERAL]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shipped_data_and_tokenizer_regenerate(tmp_path):
    write_data(tmp_path)
    for name in ["expert.jsonl", "prompts.jsonl", "heldout.jsonl", *GENERAL_FILES, "model/tokenizer.json"]:
        assert (tmp_path / name).read_text() == (MINI / name).read_text(), name


def test_splits_are_disjoint_and_sized():
    pairs, general_heldout, target = pretraining_texts()
    trained = {problem for problem, _ in pairs}
    for task, held in general_heldout.items():
        # Held-out strings are unseen, so are their prompts, except for ``add``: it reads the first two digits, and
        # its 100 problems are all trained on; its held-out prompts test retention, as a knowledge benchmark does.
        seen = [r["problem"] in trained for r in held]
        assert len(held) == 50 and (all(seen) if task == "add" else not any(seen)), task
    expert = {d["messages"][0]["content"] for d in target["expert"]}
    rl, heldout = {r["problem"] for r in target["rl"]}, {r["problem"] for r in target["heldout"]}
    assert (len(expert), len(rl), len(heldout)) == (500, 2000, 200)
    assert not (expert & rl or expert & heldout or rl & heldout)
    target_trained = {p for p in trained if p.startswith("Sum ")}
    assert len(target_trained) == TARGET_PRETRAIN and not target_trained & (expert | rl | heldout)
    assert len(pairs) == 6 * 3000 + TARGET_PRETRAIN


def test_pretraining_predicts_the_response_and_its_end_of_turn_only():
    tokenizer = AutoTokenizer.from_pretrained(MINI / "model")
    response = mini_tasks.policy_response("add", "4", "31")
    ids, start = encode(tokenizer, "Add 3 and 1.", response)
    assert tokenizer.decode(ids[:start]) == "<|im_start|>user\nAdd 3 and 1.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids[start:]) == "<think>\n3 plus 1 makes 4\n</think>\n\\boxed{4}<|im_end|>"


def test_the_shipped_policy_scores_what_its_record_says():
    """The weights in data/mini are the ones the record describes: greedy accuracy on every held-out set as written
    at build time, competent on the general tasks and weak at the target, as the miniature needs."""
    report = json.loads((MINI / "model" / "pretraining.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(MINI / "model")
    model = AutoModelForCausalLM.from_pretrained(MINI / "model")
    measured = {task: greedy_accuracy(model, tokenizer, records(MINI / f"general_{task}.jsonl")) for task in GENERAL}
    measured[TARGET] = greedy_accuracy(model, tokenizer, records(MINI / "heldout.jsonl"))
    for task, value in measured.items():
        assert round(value, 3) == report["greedy_accuracy_heldout"][task], task
    general = [report["greedy_accuracy_heldout"][task] for task in GENERAL]
    assert min(general) >= 0.9 and report["greedy_accuracy_heldout"][TARGET] <= 0.3
    assert sum(p.numel() for p in model.parameters()) == report["parameters"] < 2_500_000  # < 10 MB in float32


def test_expert_accuracy_as_recorded():
    report = json.loads((MINI / "model" / "pretraining.json").read_text())
    demos = records(MINI / "expert.jsonl")
    right = 0
    for demo in demos:
        digits = demo["messages"][0]["content"][len("Sum ") : -1].split()
        right += demo["messages"][1]["content"].endswith(f"\\boxed{{{sum(map(int, digits))}}}")
    assert right / len(demos) == report["expert_accuracy"]
    assert 0.7 <= report["expert_accuracy"] <= 0.9  # EXPERT_SLIP = 0.2 of the traces slip by one
