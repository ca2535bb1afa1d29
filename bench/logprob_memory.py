"""Peak memory and time of chunked `token_logprobs` vs the naive full log_softmax, forward + backward.

Default sizes are Qwen2.5-0.5B's LM head (V = 151936, H = 896) on 4096 tokens, float32 on the CPU. Both variants
run in this one invocation, each in its own fresh subprocess, and the script ends with the line
``peak_memory_ratio=<chunked/naive> time_ratio=<chunked/naive>``.

    python bench/logprob_memory.py                       # full size, a few minutes on 2 idle cores
    python bench/logprob_memory.py --tokens 512 --vocab 32000 --repeats 1   # smoke test

Peak memory: the kernel's high-water mark of resident memory (``ru_maxrss``) only grows, so each variant lives in
its own fresh worker process. A worker first allocates its inputs (``torch.randn`` straight into the final tensors, so
nothing larger precedes them); the high-water mark then is its baseline, and the variant's peak is the high-water
mark after its first forward + backward (the warm-up) minus that baseline. Both peaks include the ``(V, H)`` weight
gradient that any training step needs. (tracemalloc does not see torch's allocations; ru_maxrss counts the pages the
process really touched, and large CPU tensors are mmap-backed, so freed memory leaves the resident set.)
Time: median wall-clock of ``--repeats`` forward + backward runs after the warm-up. The two workers stay alive and
take turns run by run (naive, chunked, naive, ...), so a change in machine load hits both variants alike.
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
from lit_chord.logprobs import naive_token_logprobs, token_logprobs  # noqa: E402


def rss_bytes() -> tuple[int, int]:
    """(current RSS, high-water mark) of this process in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args: argparse.Namespace) -> None:
    """Serve one variant: allocate inputs, then answer each "run" line on stdin with a JSON line on stdout."""
    torch.manual_seed(0)
    hidden = torch.randn(1, args.tokens, args.hidden, requires_grad=True)
    weight = torch.randn(args.vocab, args.hidden).mul_(0.05).requires_grad_()  # logits of O(1), like a real head
    targets = torch.randint(0, args.vocab, (1, args.tokens))
    token_weights = torch.randn(1, args.tokens)  # a generic per-token upstream gradient, like a policy loss
    current, baseline = rss_bytes()
    for _ in sys.stdin:
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
        seconds = time.perf_counter() - start
        report = {
            "seconds": seconds,
            "peak_bytes": rss_bytes()[1] - baseline,
            "baseline_gap_bytes": baseline - current,  # ≈ 0: nothing before the baseline peaked above the inputs
            "grad_norms": [hidden.grad.double().norm().item(), weight.grad.double().norm().item()],
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(report), flush=True)


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
        worker(args)
        return

    variants = ("naive", "chunked")
    workers = {
        v: subprocess.Popen(
            [sys.executable, __file__, *sys.argv[1:], "--variant", v],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for v in variants
    }

    def run(variant: str) -> dict:
        proc = workers[variant]
        proc.stdin.write("run\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    warmup = {v: run(v) for v in variants}  # first run of each fresh process: its peak memory
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            times[v].append(run(v)["seconds"])
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()

    print(
        f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} chunk_size={args.chunk_size} "
        f"entropy={args.entropy} repeats={args.repeats} threads={warmup['naive']['threads']} torch={torch.__version__}"
    )
    print(f"{'variant':<8} {'peak MiB':>9} {'median s':>9} {'warm-up s':>10}  runs s")
    for v in variants:
        runs = " ".join(f"{t:.2f}" for t in times[v])
        peak, median = warmup[v]["peak_bytes"] / 2**20, statistics.median(times[v])
        print(f"{v:<8} {peak:>9.0f} {median:>9.2f} {warmup[v]['seconds']:>10.2f}  {runs}")
    norms = zip(
        ("|grad hidden|", "|grad weight|"), warmup["naive"]["grad_norms"], warmup["chunked"]["grad_norms"], strict=True
    )
    for name, a, b in norms:
        print(f"{name}: naive {a:.6g} chunked {b:.6g} (rel. diff {abs(a - b) / max(abs(a), 1e-30):.1e})")
    memory_ratio = warmup["chunked"]["peak_bytes"] / warmup["naive"]["peak_bytes"]
    time_ratio = statistics.median(times["chunked"]) / statistics.median(times["naive"])
    print(f"peak_memory_ratio={memory_ratio:.3f} time_ratio={time_ratio:.3f}")


if __name__ == "__main__":
    main()
