"""The shipped demo world is exactly what the generator writes, and it loads through from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

from lit_chord.experiments.tiny_world import build_tiny_world, expert_response, reversal_problem, split_strings

DEMO = Path(__file__).parent.parent / "data" / "demo"


def test_shipped_demo_files_are_reproducible(tmp_path):
    build_tiny_world(tmp_path)
    for name in ["expert.jsonl", "prompts.jsonl", "heldout.jsonl", "model/config.json", "model/tokenizer.json"]:
        assert (tmp_path / name).read_text() == (DEMO / name).read_text(), name


def test_task_and_split():
    assert reversal_problem("472") == {"problem": "Reverse 472.", "answer": "274"}
    assert expert_response("472", correct=True, verbose=False).endswith("\\boxed{274}")
    assert expert_response("472", correct=False, verbose=False).endswith("\\boxed{472}")  # the expert's slip
    train, held = split_strings()
    assert len(train) == 950 and len(held) == 50 and not set(train) & set(held)


def test_expert_is_imperfect_as_designed():
    records = [json.loads(line) for line in (DEMO / "expert.jsonl").read_text().splitlines()]
    correct = 0
    for record in records:
        digits = record["messages"][-2]["content"].removeprefix("Reverse ").removesuffix(".")
        correct += record["messages"][-1]["content"].endswith(f"\\boxed{{{digits[::-1]}}}")
    # 40% of demonstrations reverse (palindromes count as right either way); allow sampling noise.
    assert 0.35 < correct / len(records) < 0.5


def test_tokenizer_and_model_load_with_auto_classes(tiny_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_world / "model")
    ids = tokenizer("Reverse 472.")["input_ids"]
    assert tokenizer.decode(ids) == "Reverse 472."
    assert model.config.hidden_size // model.config.num_attention_heads >= 32  # vLLM CPU attention needs it
