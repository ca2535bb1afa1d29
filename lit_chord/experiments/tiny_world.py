"""A tiny, fully local world for the demo and the tests: a task, a tokenizer and a model config.

Nothing here downloads anything. The task is reversing a string of three digits, in the same data formats
real CHORD data uses (expert demonstrations as chat ``messages``, RL prompts as ``problem``/``answer``), so the
demo runs the real loading path. It is algorithmic, so a tiny model generalizes to held-out strings within
minutes on a CPU. The expert is deliberately imperfect: most of its demonstrations copy the digits instead of
reversing them, so imitation alone learns the slip, and on-policy RL has something to add.

The tokenizer is a byte-level BPE trained in code with Qwen2's exact normalizer and pre-tokenizer, because
``AutoTokenizer`` (and vLLM through it) rebuilds a ``qwen2`` tokenizer with that pipeline; a different one would
give other ids after a save/load round trip. The model is a Qwen2 config with head_dim 32, the smallest head
size vLLM's CPU attention accepts.

Run ``python -m lit_chord.experiments.tiny_world data/demo`` to regenerate the shipped files.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def reversal_problem(digits: str) -> dict[str, str]:
    """An RL prompt record: the problem text and its verifiable answer."""
    return {"problem": f"Reverse {digits}.", "answer": digits[::-1]}


def expert_response(digits: str, correct: bool, verbose: bool) -> str:
    """A demonstration in the paper's format: reasoning inside <think> tags, the answer in \\boxed{}.

    A wrong demonstration copies the digits instead of reversing them, the expert's habitual slip.
    """
    answer = digits[::-1] if correct else digits
    reasoning = "read it backwards" if verbose else "backwards"
    return f"<think>\n{reasoning}\n</think>\n\\boxed{{{answer}}}"


def split_strings(seed: int = 0, length: int = 3, heldout: int = 50) -> tuple[list[str], list[str]]:
    """Split all digit strings of ``length`` into train and held-out (unseen strings, same task)."""
    strings = [str(n).zfill(length) for n in range(10**length)]
    random.Random(seed).shuffle(strings)
    return strings[heldout:], strings[:heldout]


def demo_records(seed: int = 0, expert_size: int = 2000, expert_accuracy: float = 0.4) -> tuple[list, list, list]:
    """Build (expert, prompts, heldout) records for the reversal task.

    The expert reverses correctly in only ``expert_accuracy`` of its demonstrations, so imitation learns its
    majority slip (greedy decoding copies), while sampling still finds the right answer often enough for RL.
    """
    rng = random.Random(seed)
    train, held = split_strings(seed)
    expert = []
    for digits in rng.sample(train, min(expert_size, len(train))):
        messages = [
            {"role": "user", "content": reversal_problem(digits)["problem"]},
            {
                "role": "assistant",
                "content": expert_response(digits, rng.random() < expert_accuracy, verbose=False),
            },
        ]
        expert.append({"messages": messages})
    # Each RL prompt also carries the expert's own trace (the groups of LUFFY and SRFT), drawn from a
    # generator of its own so that the other records do not change.
    traces = random.Random(seed + 1)
    prompts = [
        {**reversal_problem(d), "expert_response": expert_response(d, traces.random() < expert_accuracy, False)}
        for d in train
    ]
    return expert, prompts, [reversal_problem(d) for d in held]


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


def tiny_qwen2_config(tokenizer, hidden_size: int = 128, num_layers: int = 2):
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
    tiny_generation_config(tokenizer).save_pretrained(out / "model")
    return out


def tiny_generation_config(tokenizer):
    """As Qwen2.5-Instruct's ``generation_config.json``: a turn ends at ``<|im_end|>`` or at ``<|endoftext|>``."""
    from transformers import GenerationConfig

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    return GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=pad)


if __name__ == "__main__":
    print(build_tiny_world(sys.argv[1] if len(sys.argv) > 1 else "data/demo"))
