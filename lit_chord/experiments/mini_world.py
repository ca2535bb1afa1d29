"""The paper's experiment in miniature: a small pretrained "instruct" policy, its target task and an off-policy expert.

Why: the demo (``tiny_world``) starts from random weights, so nothing in it can forget anything and φ = p(1 − p)
has nothing to work with. The paper's claims are about a policy that already knows things. This module builds one:
a tiny Qwen2 taught by plain supervised learning the six general digit tasks of ``mini_tasks`` (its
"general ability", the paper's MMLU-Pro column) in its own terse style, and shown the target task (the sum of four
digits) only briefly, so that it is weak there. The expert's traces for the target are long, worded otherwise and
not always right, as R1's are to Qwen2.5-Instruct.

``python -m lit_chord.experiments.mini_world data/mini`` rebuilds the shipped folder (seed 0, 1500 steps of batch
64: 4.0 min on 2 cores): the policy in ``model/`` (``from_pretrained`` loads it like any hub model) with
``model/pretraining.json`` (the command, the seed and the accuracy it reached per task), and the data:
``expert.jsonl`` (demonstrations, chat ``messages``), ``prompts.jsonl`` (RL prompts, each with the expert's trace for
LUFFY), ``heldout.jsonl`` (in-domain) and ``general_<task>.jsonl`` (held-out prompts of each general task).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from lit_chord.experiments import mini_tasks
from lit_chord.experiments.tiny_world import build_tokenizer, tiny_generation_config, tiny_qwen2_config, write_jsonl
from lit_chord.rewards import boxed_string

HIDDEN, LAYERS = 128, 4
# Target problems (four-digit strings, 10⁴ of them), disjoint: the policy's own pretraining (in its terse style: enough
# to be weak, not 0), the expert's demonstrations, RL prompts (the paper's 5k SFT / 20k RL split, scaled), the
# validation split that selects learning rates and SFT-best, and the held-out test the tables report.
TARGET_SPLITS = {"pretrain": 300, "expert": 500, "rl": 2000, "val": 100, "heldout": 200}
TRANSFER_SPLITS = {"pretrain": 100, "transfer": 100}  # sums of TRANSFER_LENGTH digits: the policy is shown a few
GENERAL_PER_TASK = {"train": 3000, "heldout": 50}
SUM_IN_STEPS = 0.25  # share of the policy's own sums it works out step by step (the rest: one guess)
ADD_REPEATS = 2  # the 1,370 add problems, each this many times: about as many rows as each other general task
TARGET = "target (sum of 4 digits)"


def pretraining_texts(seed: int = 0) -> tuple[list[tuple[str, str]], dict[str, list[dict]], dict]:
    """The policy's supervised data as (user prompt, response) pairs, the held-out records of each general task and
    of the transfer task, and the target's splits (``expert``: chat demonstrations; ``rl``, ``val``, ``heldout``:
    prompts). General held-out strings are never trained on; ``add``'s 1,370 problems all are, so its held-out prompts
    test retention, as a knowledge benchmark does."""
    rng = random.Random(seed)
    target = mini_tasks.split(mini_tasks.digit_strings(rng, mini_tasks.TARGET_LENGTH, 10**4), TARGET_SPLITS)
    transfer = mini_tasks.split(mini_tasks.digit_strings(rng, mini_tasks.TRANSFER_LENGTH, 10**3), TRANSFER_SPLITS)
    per_task = GENERAL_PER_TASK["train"] + GENERAL_PER_TASK["heldout"]
    general = mini_tasks.general_records(rng, per_task)
    pairs, heldout = [], {}
    held = GENERAL_PER_TASK["heldout"]
    for task, records in general.items():
        heldout[task] = [{"problem": r["problem"], "answer": r["answer"]} for r in records[-held:]]
        pairs += [(r["problem"], r["response"]) for r in records[:-held]]
    adds = mini_tasks.add_records()
    pairs += [(r["problem"], r["response"]) for r in adds] * ADD_REPEATS
    heldout["add"] = [{"problem": r["problem"], "answer": r["answer"]} for r in rng.sample(adds, held)]
    for digits in target["pretrain"] + transfer["pretrain"]:
        problem, answer = mini_tasks.sum_problem(digits)
        steps = rng.random() < SUM_IN_STEPS  # now and then the policy reasons on a sum, in its own words
        response = (
            mini_tasks.add_response(mini_tasks.terms_of(digits)) if steps else mini_tasks.policy_response("sum", answer)
        )
        pairs.append((problem, response))
    heldout["transfer"] = [mini_tasks.as_prompt(d) for d in transfer["transfer"]]
    splits = {"expert": [mini_tasks.expert_demo(d, rng) for d in target["expert"]]}
    splits |= {name: [mini_tasks.as_prompt(d) for d in target[name]] for name in ("rl", "val", "heldout")}
    rng.shuffle(pairs)
    return pairs, heldout, splits


def encode(tokenizer, problem: str, response: str) -> tuple[list[int], int]:
    """Token ids of the chat prompt and the response with its end of turn; the index where the response starts."""
    messages = [{"role": "user", "content": problem}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt + response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return ids, len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def pretrain(model, tokenizer, pairs: list[tuple[str, str]], steps: int, batch_size: int, lr: float, seed: int):
    """Supervised learning on the responses' tokens (the prompt is not predicted): AdamW, linear warm-up, cosine."""
    import math

    import torch

    encoded = [encode(tokenizer, p, r) for p, r in pairs]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    )
    pad = tokenizer.pad_token_id
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        rows = [encoded[i] for i in torch.randint(len(encoded), (batch_size,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((batch_size, width), pad)
        labels = torch.full((batch_size, width), -100)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (ids, response_start) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, response_start : len(ids)] = torch.tensor(ids[response_start:])
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 200 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            print(f"[mini_world] step {step + 1}/{steps}  loss {loss.item():.4f}  {elapsed:.0f} s", flush=True)
    model.eval()
    return model


def greedy_accuracy(model, tokenizer, records: list[dict], max_new_tokens: int = 64, batch_size: int = 64) -> float:
    """Share of ``records`` whose greedy answer is right by ``rewards.boxed_string``, the suite's reward."""
    import torch

    tokenizer.padding_side = "left"
    right = 0.0
    for first in range(0, len(records), batch_size):
        chunk = records[first : first + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": r["problem"]}], tokenize=False, add_generation_prompt=True
            )
            for r in chunk
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        right += sum(boxed_string(text, r["answer"]).accuracy for text, r in zip(texts, chunk, strict=True))
    return right / len(records)


def heldout_file(name: str) -> str:
    """The file of a held-out set: the target's ``val`` and ``heldout``, ``transfer``, ``general_<task>``."""
    return f"{name}.jsonl" if name in ("val", "heldout", "transfer") else f"general_{name}.jsonl"


def write_data(out: Path, seed: int = 0):
    """Write the data files into ``out`` and the tokenizer into ``out/model``; return (pretraining pairs, held-out
    records of the general and transfer tasks, target splits, tokenizer)."""
    (out / "model").mkdir(parents=True, exist_ok=True)
    pairs, heldout, target = pretraining_texts(seed)
    traces = random.Random(seed + 1)  # each RL prompt's own expert trace, for LUFFY's and SRFT's groups
    prompts = []
    for record in target["rl"]:
        digits = mini_tasks.sum_terms(record["problem"])
        slip = traces.random() < mini_tasks.EXPERT_SLIP
        prompts.append({**record, "expert_response": mini_tasks.expert_trace(digits, slip, traces)})
    write_jsonl(out / "expert.jsonl", target["expert"])
    write_jsonl(out / "prompts.jsonl", prompts)
    for name in ("val", "heldout"):
        write_jsonl(out / heldout_file(name), target[name])
    for name, records in heldout.items():
        write_jsonl(out / heldout_file(name), records)
    corpus = [p for pair in pairs for p in pair] + [m["content"] for d in target["expert"] for m in d["messages"]]
    corpus += [f"<|im_start|>{role}\n" for role in ("system", "user", "assistant")]
    tokenizer = build_tokenizer(corpus, vocab_size=512)
    tokenizer.save_pretrained(out / "model")
    return pairs, heldout, target, tokenizer


def expert_accuracy(demos: list[dict]) -> float:
    """Share of expert demonstrations whose boxed answer is the true sum."""
    right = 0.0
    for demo in demos:
        user, assistant = (m["content"] for m in demo["messages"])
        right += boxed_string(assistant, mini_tasks.sum_problem(mini_tasks.sum_terms(user))[1]).accuracy
    return right / len(demos)


def build(out_dir: str | Path, seed: int = 0, steps: int = 1500, batch_size: int = 64, lr: float = 3e-3) -> dict:
    """Write the miniature's data and pretrained policy into ``out_dir``; return the accuracies it reached."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    pairs, heldout, target, tokenizer = write_data(out, seed)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_qwen2_config(tokenizer, hidden_size=HIDDEN, num_layers=LAYERS))
    start = time.perf_counter()
    pretrain(model, tokenizer, pairs, steps, batch_size, lr, seed)
    minutes = (time.perf_counter() - start) / 60
    accuracy = {task: greedy_accuracy(model, tokenizer, records) for task, records in heldout.items()}
    accuracy[TARGET] = greedy_accuracy(model, tokenizer, target["heldout"])
    model.save_pretrained(out / "model")
    tiny_generation_config(tokenizer).save_pretrained(out / "model")
    report = {
        "command": f"python -m lit_chord.experiments.mini_world {out_dir} --seed {seed} --steps {steps}",
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretraining": {"steps": steps, "batch_size": batch_size, "lr": lr, "minutes": round(minutes, 1)},
        "greedy_accuracy_heldout": {k: round(v, 3) for k, v in accuracy.items()},
        "expert_accuracy": round(expert_accuracy(target["expert"]), 3),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "model" / "pretraining.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the miniature's pretrained policy and data.")
    parser.add_argument("out", nargs="?", default="data/mini")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out, args.seed, args.steps), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
