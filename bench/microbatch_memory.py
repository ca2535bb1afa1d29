"""Peak memory and time of one training step cut into row micro-batches vs micro-batches by token budget.

The step CHORD steps look like, scaled down for a CPU: one long expert row (the paper's R1 responses average 6,132
tokens, rollouts 659–2,444) first, as the datamodule's collate puts expert rows, among many short rollouts of spread
lengths. Row micro-batches (``--micro-batch-size`` rows in arrival order, each padded to its longest row) put the
long row's width on every row beside it; a token budget (``lit_chord.packing``, ``--max-tokens``) gives it a pass
of its own and packs the short rows by length. The policy is a Qwen2 built from its config with random weights
(~16M parameters by default, float32, no download); each micro-batch goes through ``ChordModule.micro_batch_loss``
(the chunked log-probabilities, the CHORD loss with the step's global normalizers) and backward, then one AdamW
step, as ``ChordModule.training_step`` does on one rank. Both variants run in this one invocation and the script ends
with the line ``peak_memory_ratio=<budget/rows> time_ratio=<budget/rows>``.

    python bench/microbatch_memory.py                          # defaults: ~3 min on 2 shared cores
    python bench/microbatch_memory.py --long 512 --short-max 128 --repeats 1   # smoke test
    python bench/microbatch_memory.py --padding-free     # a third variant: padding-free passes of --max-tokens

``--padding-free`` adds ``ChordModule(padding_free=True)``'s cut: passes of at most ``--max-tokens`` real tokens,
each one packed row (``lit_chord.packing.pack_padding_free``), and prints ``padding_free_vs_budget`` ratios before the
last line.

The measurement is ``bench/logprob_memory.py``'s: each variant lives in its own fresh worker process (the kernel's
resident-memory high-water mark, ``ru_maxrss``, only grows); after the worker has built the model, the optimizer and
the rows, the high-water mark is its baseline, and the variant's peak is the high-water mark after its first step
(the warm-up) minus that baseline, so both peaks also hold the gradients and AdamW's two moments, which the two
variants share. Time: median wall-clock of ``--repeats`` steps after the warm-up; the two workers take turns step
by step, so a change in machine load hits both alike. Both start from the same weights and rows, so the gradient
norms of their first step are printed as a correctness check.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import interleaved, rss_bytes, serve  # noqa: E402

from lit_chord.batch import Sequence, TrainTensors, pad_sequences  # noqa: E402
from lit_chord.loss import count_normalizers  # noqa: E402
from lit_chord.module import ChordModule, StepContext  # noqa: E402
from lit_chord.packing import pack_micro_batches, pack_padding_free  # noqa: E402

VARIANTS = ("rows", "budget", "padding-free")


def step_rows(args: argparse.Namespace) -> TrainTensors:
    """One long expert row first, then ``--short-rows`` rollouts of uniform random lengths, advantages ±1."""
    rng = random.Random(0)
    lengths = [args.long] + [rng.randint(args.short_min, args.short_max) for _ in range(args.short_rows)]
    sequences = []
    for index, length in enumerate(lengths):
        ids = [rng.randrange(4, args.vocab) for _ in range(length)]
        advantage = 0.0 if index == 0 else rng.choice([-1.0, 1.0])
        sequences.append(Sequence(ids[: args.prompt], ids[args.prompt :], is_expert=index == 0, advantage=advantage))
    return pad_sequences(sequences, pad_id=0)


def build(args: argparse.Namespace, folder: Path) -> ChordModule:
    """A ``ChordModule`` around a random Qwen2 written to ``folder`` as a config only."""
    from transformers import Qwen2Config

    Qwen2Config(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=2, vocab_size=args.vocab, tie_word_embeddings=True,
    ).save_pretrained(folder)  # fmt: skip
    module = ChordModule(
        model=str(folder),
        random_init=True,
        micro_batch_size=args.micro_batch_size,
        max_tokens_per_micro_batch=args.max_tokens,
        padding_free=args.variant == "padding-free",
    )
    module.configure_model()
    return module


def micro_batches(args: argparse.Namespace, rows: TrainTensors) -> list[TrainTensors]:
    """What ``packing.MicroBatcher.cut`` cuts on one rank, without a trainer."""
    if args.variant == "rows":
        return rows.micro_batches(args.micro_batch_size)
    if args.variant == "padding-free":
        return pack_padding_free(rows, args.max_tokens)
    return pack_micro_batches(rows, args.max_tokens)


def worker(args: argparse.Namespace) -> None:
    """Serve one variant: build everything, then answer each "run" line on stdin with a JSON line on stdout."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        module = build(args, Path(folder))
    assert module.scorer is not None
    optimizer = torch.optim.AdamW(module.scorer.parameters(), lr=1e-6)
    rows = step_rows(args)
    normalizers = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert)  # the step's global counts
    parts = micro_batches(args, rows)
    current, baseline = rss_bytes()

    def step() -> dict:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for micro in parts:
            module.micro_batch_loss(micro, StepContext(1, 1.0, args.short_max, micro), normalizers).loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(module.scorer.parameters(), float("inf"))
        optimizer.step()
        seconds = time.perf_counter() - start
        free = args.variant == "padding-free"  # a padding-free pass processes its real tokens only
        sizes = [int(m.attention_mask.sum()) if free else m.input_ids.numel() for m in parts]
        processed = sum(sizes)
        return {
            "seconds": seconds,
            "peak_bytes": rss_bytes()[1] - baseline,
            "baseline_gap_bytes": baseline - current,
            "grad_norm": grad_norm.item(),
            "passes": len(parts),
            "processed": processed,
            "largest_pass": max(sizes),
            "padding_frac": 1.0 - int(rows.attention_mask.sum()) / processed,
            "parameters": sum(p.numel() for p in module.scorer.parameters()),
            "threads": torch.get_num_threads(),
        }

    serve(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long", type=int, default=2048, help="tokens of the expert row")
    parser.add_argument("--short-rows", type=int, default=31)
    parser.add_argument("--short-min", type=int, default=64, help="shortest rollout row, tokens")
    parser.add_argument("--short-max", type=int, default=384, help="longest rollout row, tokens")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens of every row")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="rows per pass, rows variant")
    parser.add_argument("--max-tokens", type=int, default=2048, help="token budget per pass, budget variant")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--padding-free", action="store_true", help="also run padding-free passes of --max-tokens")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    variants = list(VARIANTS if args.padding_free else VARIANTS[:2])
    warmup, times = interleaved(__file__, variants, args.repeats)  # first step of each worker: its peak memory

    first = warmup["rows"]
    print(
        f"parameters={first['parameters'] / 1e6:.1f}M long={args.long} short_rows={args.short_rows} "
        f"short={args.short_min}-{args.short_max} micro_batch_size={args.micro_batch_size} "
        f"max_tokens={args.max_tokens} repeats={args.repeats} threads={first['threads']} torch={torch.__version__}"
    )
    print(f"{'variant':<12} {'passes':>6} {'tokens':>7} {'largest':>7} {'padding':>7} {'peak MiB':>9} {'median s':>9}")
    for v in variants:
        w = warmup[v]
        print(
            f"{v:<12} {w['passes']:>6} {w['processed']:>7} {w['largest_pass']:>7} {w['padding_frac']:>7.3f} "
            f"{w['peak_bytes'] / 2**20:>9.0f} {statistics.median(times[v]):>9.2f}  runs s: "
            + " ".join(f"{t:.2f}" for t in [w["seconds"], *times[v]])
        )
    a, b = warmup["rows"]["grad_norm"], warmup["budget"]["grad_norm"]
    print(f"|grad|: rows {a:.6g} budget {b:.6g} (rel. diff {abs(a - b) / max(abs(a), 1e-30):.1e})")
    if args.padding_free:
        c = warmup["padding-free"]["grad_norm"]
        print(f"|grad|: padding-free {c:.6g} (rel. diff to rows {abs(a - c) / max(abs(a), 1e-30):.1e})")
        free_memory = warmup["padding-free"]["peak_bytes"] / warmup["budget"]["peak_bytes"]
        free_time = statistics.median(times["padding-free"]) / statistics.median(times["budget"])
        print(f"padding_free_vs_budget peak_memory_ratio={free_memory:.3f} time_ratio={free_time:.3f}")
    memory_ratio = warmup["budget"]["peak_bytes"] / warmup["rows"]["peak_bytes"]
    time_ratio = statistics.median(times["budget"]) / statistics.median(times["rows"])
    print(f"peak_memory_ratio={memory_ratio:.3f} time_ratio={time_ratio:.3f}")


if __name__ == "__main__":
    main()
