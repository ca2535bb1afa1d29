"""Peak memory and time of chunked `token_logprobs` vs the naive full log_softmax, forward + backward.

Default sizes are Qwen2.5-0.5B's LM head (V = 151936, H = 896) on 4096 tokens, float32 on the CPU. Both variants
run in this one invocation, each in its own fresh subprocess, and the script ends with the line
``peak_memory_ratio=<chunked/naive> time_ratio=<chunked/naive>``.

    python bench/logprob_memory.py                       # full size, a few minutes on 2 cores
    python bench/logprob_memory.py --tokens 512 --vocab 32000 --repeats 1   # smoke test

Peak memory: the kernel's high-water mark of resident memory (``ru_maxrss``) is monotonic, so each variant runs in a
fresh process. The inputs are allocated first (``torch.randn`` straight into their final tensors, so no larger
temporary precedes them) and the high-water mark taken then is the baseline; the extra peak of the first
forward + backward (the warm-up) is the high-water mark after it minus that baseline. Both peaks include the
``(V, H)`` weight gradient that any training step needs. tracemalloc would miss torch's allocations, and ru_maxrss
counts what the process really touched (large CPU tensors are mmap-backed and returned to the OS when freed).
Time: median wall-clock of ``--repeats`` forward + backward runs after that warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_chord.loss import naive_token_logprobs, token_logprobs  # noqa: E402


def rss_bytes() -> tuple[int, int]:
    """(current RSS, high-water mark) of this process in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args: argparse.Namespace) -> dict:
    """Run one variant in this (fresh) process and return its peak memory, times and a checksum."""
    torch.manual_seed(0)
    hidden = torch.randn(1, args.tokens, args.hidden, requires_grad=True)
    weight = torch.randn(args.vocab, args.hidden).mul_(0.05).requires_grad_()  # logits of O(1), like a real head
    targets = torch.randint(0, args.vocab, (1, args.tokens))
    token_weights = torch.randn(1, args.tokens)  # a generic per-token upstream gradient, like a policy loss

    def step() -> float:
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        if args.variant == "naive":
            logprobs, entropy = naive_token_logprobs(hidden, weight, targets, with_entropy=args.entropy)
        else:
            logprobs, entropy = token_logprobs(
                hidden, weight, targets, chunk_size=args.chunk_size, with_entropy=args.entropy
            )
        loss = (token_weights * logprobs).sum() + (entropy.mean() if args.entropy else 0.0)
        loss.backward()
        return time.perf_counter() - start

    current, baseline = rss_bytes()
    warmup = step()
    _, peak = rss_bytes()
    times = [step() for _ in range(args.repeats)]
    return {
        "variant": args.variant,
        "peak_bytes": peak - baseline,
        "baseline_gap_bytes": baseline - current,  # ≈ 0: nothing before the baseline peaked above the inputs
        "warmup_s": warmup,
        "times_s": times,
        "checksum": [hidden.grad.double().norm().item(), weight.grad.double().norm().item()],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="B·T tokens")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entropy", action="store_true", help="also compute (and back-propagate) the entropy")
    parser.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return

    results = {}
    for variant in ("naive", "chunked"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        results[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    naive, chunked = results["naive"], results["chunked"]
    print(
        f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} chunk_size={args.chunk_size} "
        f"entropy={args.entropy} repeats={args.repeats} threads={naive['threads']} torch={torch.__version__}"
    )
    print(f"{'variant':<8} {'peak MiB':>10} {'median s':>9} {'warm-up s':>10}  runs s")
    for name, r in results.items():
        runs = " ".join(f"{t:.2f}" for t in r["times_s"])
        print(
            f"{name:<8} {r['peak_bytes'] / 2**20:>10.0f} {statistics.median(r['times_s']):>9.2f} "
            f"{r['warmup_s']:>10.2f}  {runs}"
        )
    for name, a, b in zip(("|grad hidden|", "|grad weight|"), naive["checksum"], chunked["checksum"], strict=True):
        print(f"{name}: naive {a:.6g} chunked {b:.6g} (rel. diff {abs(a - b) / max(abs(a), 1e-30):.1e})")
    memory_ratio = chunked["peak_bytes"] / naive["peak_bytes"]
    time_ratio = statistics.median(chunked["times_s"]) / statistics.median(naive["times_s"])
    print(f"peak_memory_ratio={memory_ratio:.3f} time_ratio={time_ratio:.3f}")


if __name__ == "__main__":
    main()
