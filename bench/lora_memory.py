"""Peak memory and time of one training step: a full fine-tune vs LoRA adapters on the same frozen model.

The same ~50M-parameter Qwen2 (built from its config with random weights, float32, no download), the same rows and
the same CHORD step (``ChordModule.micro_batch_loss`` per micro-batch: the chunked log-probabilities, the CHORD loss
with the step's global normalizers, backward; then one AdamW step over the parameters that train, as
``ChordModule.configure_optimizers`` hands them over). ``full`` trains every weight; ``lora`` trains rank-``--rank``
adapters on every linear layer of the decoder (``lit_chord.lora``, ``model.lora``) and leaves the rest frozen, so
it keeps no gradient and no AdamW moments for the base (16 bytes a parameter in float32 -> 4), and its backward
skips the frozen weights' gradients (the input gradients remain). Both variants run in this one invocation and the
script ends with the line ``peak_memory_ratio=<lora/full> time_ratio=<lora/full>``.

    python bench/lora_memory.py                     # defaults: ~2 min on 2 shared cores
    python bench/lora_memory.py --rows 4 --length 64 --repeats 1   # smoke test

The measurement is ``bench/microbatch_memory.py``'s: each variant lives in its own fresh worker process (the
kernel's resident-memory high-water mark, ``ru_maxrss``, only grows); after the worker has built the model and the
rows (weights included, before any gradient or optimizer state exists), the high-water mark is its baseline, and
the variant's peak is the high-water mark after its first step (the warm-up) minus that baseline: activations,
gradients and AdamW's moments. Time: median wall-clock of ``--repeats`` steps after the warm-up; the two workers take
turns step by step, so a change in machine load hits both alike.
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
from lit_chord.lora import LoraSettings  # noqa: E402
from lit_chord.loss import count_normalizers  # noqa: E402
from lit_chord.module import ChordModule, StepContext  # noqa: E402

VARIANTS = ("full", "lora")


def step_rows(args: argparse.Namespace) -> TrainTensors:
    """``--rows`` rows of ``--length`` tokens: a quarter expert rows, the rest rollouts with advantages ±1."""
    rng = random.Random(0)
    sequences = []
    for index in range(args.rows):
        ids = [rng.randrange(4, args.vocab) for _ in range(args.length)]
        expert = index < args.rows // 4
        advantage = 0.0 if expert else rng.choice([-1.0, 1.0])
        sequences.append(Sequence(ids[: args.prompt], ids[args.prompt :], is_expert=expert, advantage=advantage))
    return pad_sequences(sequences, pad_id=0)


def build(args: argparse.Namespace, folder: Path) -> ChordModule:
    """A ``ChordModule`` around a random Qwen2 written to ``folder`` as a config only, LoRA or not."""
    from transformers import Qwen2Config

    Qwen2Config(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=2, vocab_size=args.vocab, tie_word_embeddings=True,
    ).save_pretrained(folder)  # fmt: skip
    # modules_to_save=[]: adapters only, as on a pretrained base (a random-init one would train its embeddings too)
    lora = LoraSettings(rank=args.rank, alpha=2.0 * args.rank, modules_to_save=[]) if args.variant == "lora" else None
    module = ChordModule(model=str(folder), random_init=True, micro_batch_size=args.micro_batch_size, lora=lora)
    module.configure_model()
    return module


def worker(args: argparse.Namespace) -> None:
    """Serve one variant: build everything, then answer each "run" line on stdin with a JSON line on stdout."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        module = build(args, Path(folder))
    assert module.scorer is not None
    trained = [p for p in module.scorer.parameters() if p.requires_grad]  # as configure_optimizers hands them over
    optimizer = torch.optim.AdamW(trained, lr=1e-6)
    rows = step_rows(args)
    normalizers = count_normalizers(rows.loss_mask[:, :-1], rows.is_expert)  # the step's global counts
    parts = rows.micro_batches(args.micro_batch_size)
    current, baseline = rss_bytes()

    def step() -> dict:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for micro in parts:
            module.micro_batch_loss(micro, StepContext(1, 1.0, args.length, micro), normalizers).loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, float("inf"))
        optimizer.step()
        return {
            "seconds": time.perf_counter() - start,
            "peak_bytes": rss_bytes()[1] - baseline,
            "baseline_gap_bytes": baseline - current,
            "grad_norm": grad_norm.item(),
            "parameters": sum(p.numel() for p in module.scorer.parameters()),
            "trained": sum(p.numel() for p in trained),
            "threads": torch.get_num_threads(),
        }

    serve(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=256, help="tokens of every row")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens of every row")
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1792)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    warmup, times = interleaved(__file__, list(VARIANTS), args.repeats)  # first step of each worker: its peak memory

    first = warmup["full"]
    print(
        f"parameters={first['parameters'] / 1e6:.1f}M rows={args.rows} length={args.length} "
        f"micro_batch_size={args.micro_batch_size} rank={args.rank} repeats={args.repeats} "
        f"threads={first['threads']} torch={torch.__version__}"
    )
    print(f"{'variant':<7} {'trained':>10} {'peak MiB':>9} {'median s':>9}")
    for v in VARIANTS:
        w = warmup[v]
        print(
            f"{v:<7} {w['trained']:>10,} {w['peak_bytes'] / 2**20:>9.0f} {statistics.median(times[v]):>9.2f}  runs s: "
            + " ".join(f"{t:.2f}" for t in [w["seconds"], *times[v]])
        )
    memory_ratio = warmup["lora"]["peak_bytes"] / warmup["full"]["peak_bytes"]
    time_ratio = statistics.median(times["lora"]) / statistics.median(times["full"])
    print(f"peak_memory_ratio={memory_ratio:.3f} time_ratio={time_ratio:.3f}")


if __name__ == "__main__":
    main()
