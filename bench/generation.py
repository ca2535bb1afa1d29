"""Tokens/s of ``TransformersEngine.generate`` (batched, left-padded, KV cache) vs a naive per-prompt loop, CPU.

The engine generates all ``prompts × n`` completions in one left-padded batch through ``model.generate`` with the
KV cache; the baseline calls ``model.generate`` once per completion (batch of one, same sampling, same stop ids).
Both sample at temperature 1 up to ``--max-new-tokens`` and stop at ``<|im_end|>`` / ``<|endoftext|>``; a
completion's tokens are counted up to and including its stop token, so a batch that keeps decoding rows which
have already stopped pays for that in its tokens/s. The prompts are the tiny world's problems through the chat
template, every other one with a short system message, so the batch really is left-padded.

Models: the tiny world's Qwen2 (hidden 128, 2 layers) and a ~47M-parameter Qwen2 (hidden 512, 12 layers,
8 heads, 4 KV heads, MLP 2048), random weights. Each round runs the engine and the loop once, alternating which
goes first, after one untimed warm-up of each; the figures are medians over rounds.

    python bench/generation.py                   # defaults: ~1.5 min on the shared 2-core VM
    python bench/generation.py --models tiny --rounds 1      # smoke test

The last line is ``generation_speedup=<engine tokens/s ÷ loop tokens/s>`` of the last model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lit_chord.engines import SamplingConfig  # noqa: E402
from lit_chord.engines.transformers_engine import TransformersEngine  # noqa: E402
from lit_chord.experiments.tiny_world import build_tiny_world  # noqa: E402

SYSTEM = "You reverse digit strings."


def load_model(world: Path, size: str, tokenizer):
    """The tiny world's model, or a ~47M-parameter Qwen2 with random weights (built in memory)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    if size == "tiny":
        return AutoModelForCausalLM.from_pretrained(world / "model", dtype=torch.float32).eval()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def chat_prompts(world: Path, tokenizer, count: int) -> list[list[int]]:
    """``count`` problems through the chat template; odd ones with a system message (two prompt lengths)."""
    records = [json.loads(line) for line in (world / "prompts.jsonl").read_text().splitlines()[:count]]
    prompts = []
    for index, record in enumerate(records):
        messages = [{"role": "system", "content": SYSTEM}] if index % 2 else []
        messages.append({"role": "user", "content": record["problem"]})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return prompts


def completion_length(tokens: list[int], stop_ids: list[int]) -> int:
    """Tokens up to and including the first stop token."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return index + 1
    return len(tokens)


def run_engine(engine: TransformersEngine, prompts: list[list[int]], n: int, max_new: int, seed: int) -> int:
    groups = engine.generate(prompts, n, SamplingConfig(temperature=1.0, max_new_tokens=max_new, seed=seed))
    return sum(len(c.token_ids) for group in groups for c in group)


@torch.no_grad()
def run_loop(model, prompts: list[list[int]], n: int, max_new: int, seed: int, stop_ids: list[int], pad: int) -> int:
    """The baseline: one ``model.generate`` call per completion."""
    torch.manual_seed(seed)
    tokens = 0
    for ids in prompts:
        input_ids = torch.tensor([ids])
        for _ in range(n):
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=None,
                eos_token_id=stop_ids,
                pad_token_id=pad,
            )
            tokens += completion_length(output[0, len(ids) :].tolist(), stop_ids)
    return tokens


def bench_model(world: Path, size: str, args: argparse.Namespace) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    model = load_model(world, size, tokenizer)
    stop_ids = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    prompts_count, n, max_new = getattr(args, f"{size}_shape")
    prompts = chat_prompts(world, tokenizer, prompts_count)
    engine = TransformersEngine()
    engine.attach(model, stop_ids, tokenizer.pad_token_id)
    variants = {
        "engine": lambda seed: run_engine(engine, prompts, n, max_new, seed),
        "loop": lambda seed: run_loop(model, prompts, n, max_new, seed, stop_ids, tokenizer.pad_token_id),
    }
    for variant in variants.values():  # warm-up (first calls allocate and build caches)
        variant(-1)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, list[int]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in list(variants)[r % 2 :] + list(variants)[: r % 2]:
            start = time.perf_counter()
            count = variants[name](args.seed + r)
            rates[name].append(count / (time.perf_counter() - start))
            tokens[name].append(count)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    widths = sorted({len(p) for p in prompts})
    print(
        f"\n{size}: {params:.1f}M parameters; {prompts_count} prompts x {n} completions, up to {max_new} new tokens, "
        f"prompt lengths {widths}; {args.rounds} rounds"
    )
    print(f"{'variant':8s} {'tokens/run':>11s} {'tokens/s (median)':>18s} {'per round':>30s}")
    for name in variants:
        per_round = " ".join(f"{x:.0f}" for x in rates[name])
        median = statistics.median(rates[name])
        print(f"{name:8s} {statistics.mean(tokens[name]):11.0f} {median:18.0f} {per_round:>30s}")
    ratio = statistics.median(rates["engine"]) / statistics.median(rates["loop"])
    print(f"{size}: engine / loop tokens/s = {ratio:.2f}")
    return ratio


def shape(text: str) -> tuple[int, int, int]:
    prompts, n, max_new = (int(x) for x in text.split("x"))
    return prompts, n, max_new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["tiny", "50m"], default=["tiny", "50m"])
    parser.add_argument("--tiny-shape", type=shape, default=(8, 4, 64), help="PROMPTSxNxMAX_NEW_TOKENS for tiny")
    parser.add_argument("--50m-shape", dest="50m_shape", type=shape, default=(4, 4, 32), help="same for 50m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default (nproc)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        world = build_tiny_world(tmp, with_weights=True)
        ratios = {size: bench_model(world, size, args) for size in args.models}
    print("\n" + " ".join(f"{size}={ratio:.2f}" for size, ratio in ratios.items()))
    print(f"generation_speedup={ratios[args.models[-1]]:.2f}")


if __name__ == "__main__":
    main()
