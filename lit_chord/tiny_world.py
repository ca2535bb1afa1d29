"""A tiny, fully local world for the demo and the tests: a task, a tokenizer and a model config.

Nothing here downloads anything. The task is single-digit addition in the same data formats real CHORD data
uses (expert demonstrations as chat ``messages``, RL prompts as ``problem``/``answer``), so the demo runs the
real loading path. The expert is deliberately imperfect: on problems with a carry it forgets the carry in a
share of its demonstrations, so imitation alone is capped and on-policy RL has something to add.

The tokenizer is a byte-level BPE trained in code with Qwen2's exact normalizer and pre-tokenizer, because
``AutoTokenizer`` (and vLLM through it) rebuilds a ``qwen2`` tokenizer with that pipeline; a different one would
give other ids after a save/load round trip. The model is a Qwen2 config with head_dim 32, the smallest head
size vLLM's CPU attention accepts.

Run ``python -m lit_chord.tiny_world data/demo`` to regenerate the shipped files.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

DEMO_SYSTEM_PROMPT = "Think in <think> </think>, then give the answer in \\boxed{}."
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def addition_problem(a: int, b: int) -> dict[str, str]:
    """An RL prompt record: the problem text and its verifiable answer."""
    return {"problem": f"What is {a} + {b}?", "answer": str(a + b)}


def expert_response(a: int, b: int, forget_carry: bool, verbose: bool) -> str:
    """A demonstration in the paper's format: reasoning inside <think> tags, the answer in \\boxed{}."""
    total = a + b - 10 if forget_carry else a + b
    reasoning = f"add {a} and {b}: {a}+{b}={total}" if verbose else f"{a}+{b}={total}"
    return f"<think>\n{reasoning}\n</think>\n\\boxed{{{total}}}"


def split_pairs(seed: int = 0, heldout: int = 20) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split the 100 digit pairs into train and held-out; a held-out pair's mirror (b, a) stays in train."""
    rng = random.Random(seed)
    off_diagonal = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    rng.shuffle(off_diagonal)
    held = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in off_diagonal[:heldout]]
    train = [(a, b) for a in range(10) for b in range(10) if (a, b) not in held]
    return train, held


def demo_records(
    seed: int = 0, demos_per_pair: int = 8, carry_error_rate: float = 0.5
) -> tuple[list[dict], list[dict], list[dict]]:
    """Build (expert, prompts, heldout) records for the addition task."""
    rng = random.Random(seed)
    train, held = split_pairs(seed)
    expert = []
    for a, b in train:
        for _ in range(demos_per_pair):
            forget = a + b >= 10 and rng.random() < carry_error_rate
            messages = [
                {"role": "system", "content": DEMO_SYSTEM_PROMPT},
                {"role": "user", "content": addition_problem(a, b)["problem"]},
                {"role": "assistant", "content": expert_response(a, b, forget, verbose=rng.random() < 0.3)},
            ]
            expert.append({"messages": messages})
    rng.shuffle(expert)
    return expert, [addition_problem(a, b) for a, b in train], [addition_problem(a, b) for a, b in held]


def build_tokenizer(texts: list[str], vocab_size: int = 384):
    """Train a byte-level BPE with Qwen2's pipeline and wrap it as a transformers tokenizer with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    return hf_tokenizer


def tiny_qwen2_config(tokenizer, hidden_size: int = 128, num_layers: int = 4):
    """A small Qwen2 config (head_dim 32 so vLLM's CPU attention accepts it)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=max(1, hidden_size // 64),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def build_tiny_world(out_dir: str | Path, seed: int = 0, with_weights: bool = False) -> Path:
    """Write the demo task's data, tokenizer and model config (and random weights if asked) into ``out_dir``.

    Layout: ``expert.jsonl``, ``prompts.jsonl``, ``heldout.jsonl`` and ``model/`` (tokenizer files and
    ``config.json``; ``model.safetensors`` too when ``with_weights``), all loadable with ``from_pretrained``.
    """
    out = Path(out_dir)
    (out / "model").mkdir(parents=True, exist_ok=True)
    expert, prompts, heldout = demo_records(seed)
    for name, records in [("expert.jsonl", expert), ("prompts.jsonl", prompts), ("heldout.jsonl", heldout)]:
        write_jsonl(out / name, records)
    corpus = [m["content"] for r in expert for m in r["messages"]] + [p["problem"] for p in prompts + heldout]
    corpus += [f"<|im_start|>{role}\n" for role in ("system", "user", "assistant")]
    tokenizer = build_tokenizer(corpus)
    tokenizer.save_pretrained(out / "model")
    config = tiny_qwen2_config(tokenizer)
    if with_weights:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(out / "model")
    else:
        config.save_pretrained(out / "model")
    return out


if __name__ == "__main__":
    print(build_tiny_world(sys.argv[1] if len(sys.argv) > 1 else "data/demo"))
