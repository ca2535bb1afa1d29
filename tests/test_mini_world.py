"""The miniature's pretrained policy and data: the shipped files regenerate, the splits are disjoint, the prompt is
not trained on, and the shipped policy scores what its ``pretraining.json`` says."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_chord.experiments import mini_tasks
from lit_chord.experiments.mini_world import (
    TARGET,
    TARGET_SPLITS,
    TRANSFER_SPLITS,
    encode,
    greedy_accuracy,
    heldout_file,
    pretraining_texts,
    write_data,
)

MINI = Path(__file__).parent.parent / "data" / "mini"
HELDOUT = [*mini_tasks.GENERAL, "add", "transfer"]  # the held-out sets besides the target's val and heldout


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shipped_data_and_tokenizer_regenerate(tmp_path):
    write_data(tmp_path)
    files = ["expert.jsonl", "prompts.jsonl", "val.jsonl", "heldout.jsonl", *map(heldout_file, HELDOUT)]
    for name in [*files, "model/tokenizer.json"]:
        assert (tmp_path / name).read_text() == (MINI / name).read_text(), name


def test_splits_are_disjoint_and_sized():
    pairs, heldout, target = pretraining_texts()
    trained = {problem for problem, _ in pairs}
    for task, held in heldout.items():
        # Held-out strings are unseen, so are their prompts, except for ``add``: its 1,370 problems are all trained
        # on, and its held-out prompts test retention, as a knowledge benchmark does.
        seen = [r["problem"] in trained for r in held]
        assert len(held) == (100 if task == "transfer" else 50) and (all(seen) if task == "add" else not any(seen))
    expert = {d["messages"][0]["content"] for d in target["expert"]}
    prompts = {name: {r["problem"] for r in target[name]} for name in ("rl", "val", "heldout")}
    assert [len(expert), *map(len, prompts.values())] == [TARGET_SPLITS[k] for k in ("expert", "rl", "val", "heldout")]
    sets = [expert, *prompts.values()]
    assert all(not a & b for i, a in enumerate(sets) for b in sets[i + 1 :])
    sums = {p for p in trained if p.startswith("Sum ")}  # the policy's own terse sums: target and transfer lengths
    assert len(sums) == TARGET_SPLITS["pretrain"] + TRANSFER_SPLITS["pretrain"] and not sums & set.union(*sets)
    assert not sums & {r["problem"] for r in heldout["transfer"]}
    assert len(pairs) == 5 * 3000 + 2 * 1370 + len(sums)


def test_pretraining_predicts_the_response_and_its_end_of_turn_only():
    tokenizer = AutoTokenizer.from_pretrained(MINI / "model")
    response = mini_tasks.add_response([3, 1])
    ids, start = encode(tokenizer, "Add 3 and 1.", response)
    assert tokenizer.decode(ids[:start]) == "<|im_start|>user\nAdd 3 and 1.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids[start:]) == "<think>\n3 plus 1 makes 4\n</think>\n\\boxed{4}<|im_end|>"


def test_the_shipped_policy_scores_what_its_record_says():
    """The weights in data/mini are the ones the record describes: greedy accuracy on every held-out set as written
    at build time, competent on the general tasks and weak at the target, as the miniature needs."""
    report = json.loads((MINI / "model" / "pretraining.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(MINI / "model")
    model = AutoModelForCausalLM.from_pretrained(MINI / "model")
    measured = {task: greedy_accuracy(model, tokenizer, records(MINI / heldout_file(task))) for task in HELDOUT}
    measured[TARGET] = greedy_accuracy(model, tokenizer, records(MINI / "heldout.jsonl"))
    for task, value in measured.items():
        assert round(value, 3) == report["greedy_accuracy_heldout"][task], task
    retention = [report["greedy_accuracy_heldout"][task] for task in [*mini_tasks.GENERAL, "add"]]
    assert min(retention) >= 0.8 and report["greedy_accuracy_heldout"][TARGET] <= 0.3  # competent; weak at the target
    assert sum(p.numel() for p in model.parameters()) == report["parameters"] < 2_500_000  # < 10 MB in float32


def test_expert_accuracy_as_recorded():
    report = json.loads((MINI / "model" / "pretraining.json").read_text())
    demos = records(MINI / "expert.jsonl")
    right = 0
    for demo in demos:
        terms = mini_tasks.sum_terms(demo["messages"][0]["content"])
        right += demo["messages"][1]["content"].endswith(f"\\boxed{{{sum(terms)}}}")
    assert right / len(demos) == report["expert_accuracy"]
    assert 0.7 <= report["expert_accuracy"] <= 0.9  # EXPERT_SLIP = 0.2 of the traces slip by one
