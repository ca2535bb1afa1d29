"""Peak memory and time of chunked `token_logprobs` vs the naive full log_softmax, forward + backward.

Default sizes are Qwen2.5-0.5B's LM head (V = 151936, H = 896) on 4096 tokens, float32 on the CPU. Both variants
run in this one invocation, each in its own fresh subprocess, and the script ends with the line
``peak_memory_ratio=<chunked/naive> time_ratio=<chunked/naive>``.

    python bench/logprob_memory.py                       # full size, a few minutes on 2 idle cores
    python bench/logprob_memory.py --tokens 512 --vocab 32000 --repeats 1   # smoke test
    python bench/logprob_memory.py --step --tokens 2048 --repeats 1          # a whole training step (below)

``--step`` measures a whole training step instead of the LM head alone: a Qwen2.5-0.5B-shaped policy (24 layers,
hidden 896, vocab 151936, random weights, float32) scores ``--tokens`` tokens (rows of ``--row-len``) through its
decoder and one of the two log-probability paths, back-propagates a per-token loss and takes an AdamW step. The
baseline is then taken after the model is built, so both peaks also hold the gradients, AdamW's two moments and
the decoder's activations, which the two paths share.

Peak memory: the kernel's high-water mark of resident memory (``ru_maxrss``) only grows, so each variant lives in
its own fresh worker process. A worker first allocates its inputs (``torch.randn`` straight into the final tensors, so
nothing larger precedes them); the high-water mark then is its baseline, and the variant's peak is the high-water
mark after its first forward + backward (the warm-up) minus that baseline. Both peaks include the ``(V, H)`` weight
gradient that any training step needs. (tracemalloc does not see torch's allocations; ru_maxrss counts the pages the
process really touched, and large CPU tensors are mmap-backed, so freed memory leaves the resident set.)
Time: median wall-clock of ``--repeats`` forward + backward runs after the warm-up. The two workers stay alive and
take turns run by run (naive, chunked, naive, ...), so a change in machine load hits both variants alike; with
``--step`` they run one after the other, since two 0.5B models with their AdamW states do not fit in RAM together.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import Worker, interleaved, rss_bytes, serve  # noqa: E402

from lit_chord.logprobs import naive_token_logprobs, token_logprobs  # noqa: E402


def logprobs(args: argparse.Namespace, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    if args.variant == "naive":
        return naive_token_logprobs(hidden, weight, targets, with_entropy=args.entropy)
    return token_logprobs(hidden, weight, targets, chunk_size=args.chunk_size, with_entropy=args.entropy)


def lm_head_run(args: argparse.Namespace):
    """Inputs of the LM head alone; returns the run (forward + backward) and the tensors whose gradients to report."""
    hidden = torch.randn(1, args.tokens, args.hidden, requires_grad=True)
    weight = torch.randn(args.vocab, args.hidden).mul_(0.05).requires_grad_()  # logits of O(1), like a real head
    targets = torch.randint(0, args.vocab, (1, args.tokens))
    token_weights = torch.randn(1, args.tokens)  # a generic per-token upstream gradient, like a policy loss

    def run() -> None:
        hidden.grad = weight.grad = None
        lp, entropy = logprobs(args, hidden, weight, targets)
        ((token_weights * lp).sum() + (entropy.mean() if args.entropy else 0.0)).backward()

    return run, [hidden, weight]


def training_step_run(args: argparse.Namespace):
    """A Qwen2.5-0.5B-shaped policy, its rows and an AdamW; the run is one whole training step (``--step``)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        hidden_size=args.hidden, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=args.vocab, tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rows = torch.randint(0, args.vocab, (args.tokens // args.row_len, args.row_len))
    token_weights = torch.randn(rows.shape[0], args.row_len - 1)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        hidden = model.get_decoder()(input_ids=rows).last_hidden_state[:, :-1]
        lp, entropy = logprobs(args, hidden, model.get_output_embeddings().weight, rows[:, 1:])
        ((token_weights * lp).mean() + (entropy.mean() if args.entropy else 0.0)).backward()
        optimizer.step()

    return run, [model.get_input_embeddings().weight, model.model.layers[0].mlp.up_proj.weight]


def worker(args: argparse.Namespace) -> None:
    """Serve one variant: allocate inputs, then answer each "run" line on stdin with a JSON line on stdout."""
    torch.manual_seed(0)
    run, reported = training_step_run(args) if args.step else lm_head_run(args)
    current, baseline = rss_bytes()

    def step() -> dict:
        start = time.perf_counter()
        run()
        return {
            "seconds": time.perf_counter() - start,
            "peak_bytes": rss_bytes()[1] - baseline,
            "baseline_gap_bytes": baseline - current,  # ≈ 0: nothing before the baseline peaked above the inputs
            "grad_norms": [t.grad.double().norm().item() for t in reported],
            "threads": torch.get_num_threads(),
        }

    serve(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="B·T tokens")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entropy", action="store_true", help="also compute (and back-propagate) the entropy")
    parser.add_argument("--step", action="store_true", help="a whole training step of a 0.5B-shaped policy")
    parser.add_argument("--row-len", type=int, default=1024, help="tokens per row with --step")
    parser.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    variants = ["naive", "chunked"]
    warmup, times = {}, {}
    if args.step:  # two 0.5B models with AdamW states do not fit in RAM side by side: one worker after the other
        for v in variants:
            alone = Worker(__file__, v)
            warmup[v] = alone.run()
            times[v] = [alone.run()["seconds"] for _ in range(args.repeats)]
            alone.stop()
    else:
        warmup, times = interleaved(__file__, variants, args.repeats)  # first run of each worker: its peak memory

    print(
        f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} chunk_size={args.chunk_size} "
        f"entropy={args.entropy} step={args.step} repeats={args.repeats} threads={warmup['naive']['threads']} "
        f"torch={torch.__version__}"
    )
    print(f"{'variant':<8} {'peak MiB':>9} {'median s':>9} {'warm-up s':>10}  runs s")
    for v in variants:
        runs = " ".join(f"{t:.2f}" for t in times[v])
        peak, median = warmup[v]["peak_bytes"] / 2**20, statistics.median(times[v])
        print(f"{v:<8} {peak:>9.0f} {median:>9.2f} {warmup[v]['seconds']:>10.2f}  {runs}")
    names = ("|grad embedding|", "|grad layer 0 up_proj|") if args.step else ("|grad hidden|", "|grad weight|")
    norms = zip(names, warmup["naive"]["grad_norms"], warmup["chunked"]["grad_norms"], strict=True)
    for name, a, b in norms:
        print(f"{name}: naive {a:.6g} chunked {b:.6g} (rel. diff {abs(a - b) / max(abs(a), 1e-30):.1e})")
    memory_ratio = warmup["chunked"]["peak_bytes"] / warmup["naive"]["peak_bytes"]
    time_ratio = statistics.median(times["chunked"]) / statistics.median(times["naive"])
    print(f"peak_memory_ratio={memory_ratio:.3f} time_ratio={time_ratio:.3f}")


if __name__ == "__main__":
    main()
