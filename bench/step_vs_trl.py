"""Seconds per optimizer step: lit_chord (Lightning + RolloutCallback + TransformersEngine) vs TRL's GRPOTrainer, CPU.

The same work in both: the same model loaded from disk with ``from_pretrained`` (the tiny world's random Qwen2, or
a ~10M one with ``--model-size 10m``); the tiny world's prompts through the same chat template (no system prompt);
``--generations`` completions for each of ``--prompts`` prompts per step, sampled with HF ``generate`` and its KV
cache at temperature 1 (top-p 1, no top-k) up to ``--max-new-tokens`` tokens, stopping at the same two ids
(``<|im_end|>``, ``<|endoftext|>``; checked); the same reward (``lit_chord.rewards.exact_match`` on the boxed
answer); then one forward/backward over the whole batch and one AdamW step (same learning rate, no weight decay,
constant schedule, clipping at 1.0, no gradient checkpointing). TRL: ``beta=0``, ``num_iterations=1``,
``gradient_accumulation_steps=1``, ``per_device_train_batch_size = prompts × generations``, ``use_vllm=False``,
``use_cpu=True``, ``bf16=False``, ``gradient_checkpointing=False`` (GRPOConfig's default is True).
lit_chord: μ = 0 (pure GRPO: no expert rows, ``mu_peak = mu_valley = 0``); and separately the full CHORD step
(expert rows at ``--expert-ratio``, constant μ = ``--chord-mu``, φ weighting) against the same TRL GRPO step.

Time per step: the wall-clock interval from the end of the previous step to the end of this one (step-end hooks:
lit_chord ``on_train_batch_end``, TRL ``on_step_end``), so it holds everything a step costs: data, generation,
reward, forward/backward, optimizer, logging (TRL logs after its step-end hook, so a hook-to-hook window would miss
it; those windows are printed too). The first ``--warmup`` steps of every run are dropped. Every round runs each
framework once in this process with seed ``--seed + round``, rotating the order, so changes in machine load hit all
alike; the figures are medians over all measured steps. The mean completion length is printed for each framework
to check the work is the same. Then one profiled run of each framework (cProfile over the measured steps) splits
a step into phases.

Threads: ``--threads 1`` by default. On the shared 2-core VM, torch's default of 2 OpenMP threads turns every small
kernel into a wait for a descheduled thread whenever another job runs (a 64×128×384 linear: ~70 µs with one
thread, 0.9–15 ms with two); ``--threads 0`` keeps torch's default.

    python bench/step_vs_trl.py                                  # defaults: ~1.5 min on the shared 2-core VM
    python bench/step_vs_trl.py --model-size 10m --prompts 4 --generations 4 --max-new-tokens 32
    python bench/step_vs_trl.py --rounds 1 --steps 2 --no-chord --no-profile   # smoke test
    python bench/step_vs_trl.py --lengths mixed                  # equal work, spread lengths (below)

The last line is ``grpo_step_speedup_vs_trl=<TRL s/step ÷ lit_chord GRPO s/step>``.

``--lengths mixed``: equal work with lengths spread as real rollouts are. Every completion's length is drawn from a
log-normal (median ``--median-length``, default ``max_new_tokens / 5``, σ ``--sigma``, clipped to [2,
``max_new_tokens``]: a long tail up to the limit) and forced on both sides by the same logits processor (stop ids
barred before it, an ``<|im_end|>`` forced at it; per generate call, the same lengths for both frameworks in the
same step), so no rollout is truncated; the reward is a hash of the completion in [0, 1), so no group has equal
rewards. Every row then has a gradient: TRL trains every row anyway, and lit_chord has no row to skip (checked:
the run stops if one is). lit_chord cuts the step by token budget (``--max-tokens``, padded rows or
``--padding-free``); TRL pads every completion to the longest. The CHORD run adds expert rows whose responses are
4–8× the median rollout length (padded with more reasoning text). Last lines: ``update_only_speedup_vs_trl=``
(step minus generation) and ``equal_work_speedup_vs_trl=<TRL s/step ÷ lit_chord GRPO s/step>``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import math
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lit_chord.experiments.tiny_world import build_tiny_world  # noqa: E402
from lit_chord.rewards import exact_match  # noqa: E402


# ----- the shared world ---------------------------------------------------------------------------------------------
def build_world(root: Path, model_size: str, max_positions: int) -> Path:
    """Tiny-world data and tokenizer; the model weights (tiny or ~10M) and a generation config that stops at both
    stop ids, which TRL reads from ``generation_config.eos_token_id`` and lit_chord from the tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config

    world = build_tiny_world(root, with_weights=True)
    model_dir = world / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if model_size == "10m":
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=384,
            intermediate_size=1024,
            num_hidden_layers=6,
            num_attention_heads=6,  # head_dim 64
            num_key_value_heads=2,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.pad_token_id,
        )
    config.max_position_embeddings = max(config.max_position_embeddings, max_positions)
    torch.manual_seed(0)
    model = (
        AutoModelForCausalLM.from_config(config)
        if model_size == "10m"
        else AutoModelForCausalLM.from_pretrained(model_dir, config=config)
    )
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(model_dir)
    print(f"model: {model_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {model_dir}")
    return world


def problems(world: Path) -> list[dict]:
    return [json.loads(line) for line in (world / "prompts.jsonl").read_text().splitlines()]


# ----- --lengths mixed: forced lengths, a reward without ties, long expert rows --------------------------------------
def hash_reward(completion: str, answer: str) -> float:
    """A reward in [0, 1) that no two different completions share: no group with equal rewards, no advantage 0."""
    return zlib.crc32(f"{answer}|{completion}".encode()) / 2**32


def stop_ids(world: Path) -> list[int]:
    """``<|im_end|>`` then ``<|endoftext|>``: the ids both frameworks stop at (see ``build_world``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    return [tokenizer.eos_token_id, tokenizer.pad_token_id]


class ForcedLengths:
    """The completion lengths of successive generate calls: log-normal, clipped to [2, max_new_tokens], drawn from
    one seeded stream, so two runs with the same seed get the same lengths call by call (one call per step)."""

    def __init__(self, seed: int, median: float, sigma: float, max_new_tokens: int) -> None:
        self.rng, self.median, self.sigma, self.max_new_tokens = random.Random(seed), median, sigma, max_new_tokens

    @classmethod
    def schedule(cls, args: argparse.Namespace, seed: int) -> ForcedLengths:
        return cls(seed, median_length(args), args.sigma, args.max_new_tokens)

    def draw(self, rows: int) -> list[int]:
        lengths = (round(self.rng.lognormvariate(math.log(self.median), self.sigma)) for _ in range(rows))
        return [min(max(length, 2), self.max_new_tokens) for length in lengths]


def median_length(args: argparse.Namespace) -> float:
    return args.median_length or args.max_new_tokens / 5


def force_lengths(model, lengths: ForcedLengths, stop: list[int]) -> None:
    """Wrap ``model.generate`` (an instance attribute over the method) so that row i of each call stops exactly at
    its drawn length: the stop ids are barred before it and ``stop[0]`` is forced at it."""
    from transformers import LogitsProcessor, LogitsProcessorList

    generate = model.generate

    class Forced(LogitsProcessor):
        def __init__(self, targets: torch.Tensor, start: int) -> None:
            self.targets, self.start = targets, start

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            scores[:, stop] = -math.inf
            at = self.targets.to(scores.device) == input_ids.shape[1] - self.start + 1  # the next token is the last
            scores[at] = -math.inf
            scores[at, stop[0]] = 0.0
            return scores

    def forced(*args, **kwargs):
        input_ids = kwargs["input_ids"]
        targets = torch.tensor(lengths.draw(input_ids.shape[0]))
        kwargs["logits_processor"] = LogitsProcessorList([Forced(targets, input_ids.shape[1])])
        return generate(*args, **kwargs)

    model.generate = forced


def lengthen_expert(world: Path, args: argparse.Namespace) -> int:
    """Rewrite ``expert.jsonl`` so that each response is 4–8× the median rollout length in tokens (more reasoning
    inside ``<think>``); returns the longest response in tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    rng, median = random.Random(0), median_length(args)
    filler = " read it backwards"
    unit = len(tokenizer(filler * 16)["input_ids"]) / 16
    path, longest = world / "expert.jsonl", 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        answer = record["messages"][-1]
        target = rng.uniform(4 * median, 8 * median)
        base = len(tokenizer(answer["content"])["input_ids"])
        more = filler * max(0, round((target - base) / unit))
        answer["content"] = answer["content"].replace("\n</think>", more + "\n</think>", 1)
        longest = max(longest, len(tokenizer(answer["content"])["input_ids"]))
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return longest


class StepClock:
    """Per measured step: the window from the step-begin hook to the step-end hook, and the interval since the previous
    step's end (everything: data, loop, logging). Turns the profiler on over exactly the measured intervals."""

    def __init__(self, args: argparse.Namespace, profiler: cProfile.Profile | None) -> None:
        self.warmup, self.last, self.profiler = args.warmup, args.warmup + args.steps, profiler
        self.begin, self.ends, self.windows = 0.0, [], []

    def step_begin(self) -> None:
        self.begin = time.perf_counter()

    def step_end(self, completed: int) -> None:
        """``completed``: optimizer steps done, this one included."""
        now = time.perf_counter()
        self.ends.append(now)
        if completed > self.warmup:
            self.windows.append(now - self.begin)
        if self.profiler is not None and completed == self.warmup:
            self.profiler.enable()
        if self.profiler is not None and completed == self.last:
            self.profiler.disable()

    def result(self, **extra) -> dict:
        intervals = [b - a for a, b in zip(self.ends[self.warmup - 1 : -1], self.ends[self.warmup :], strict=True)]
        return {"windows": self.windows, "intervals": intervals, **extra}


# ----- lit_chord ----------------------------------------------------------------------------------------------------
def run_lit(
    world: Path, args: argparse.Namespace, seed: int, chord: bool, profiler: cProfile.Profile | None = None
) -> dict:
    """One Lightning run of ``warmup + steps`` optimizer steps."""
    import lightning as L
    from lightning.pytorch import Callback

    from lit_chord.datamodule import ChordDataModule
    from lit_chord.module import ChordModule
    from lit_chord.objectives import Chord
    from lit_chord.rollout_callback import RolloutCallback

    clock = StepClock(args, profiler)
    measured: dict[str, list] = {"gen_seconds": [], "rollout_seconds": [], "lengths": [], "rows": [], "cuts": []}
    mixed = args.lengths == "mixed"

    class StepTimer(Callback):
        """First in the callback list: its batch-start hook runs before the rollout callback generates."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.step_begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_end(batch_idx + 1)
            if mixed:  # equal work: every row carries a gradient
                trained, scored = pl_module.split_rows(batch.train)
                if len(scored) or len(trained) != len(batch.train):
                    raise RuntimeError(f"not equal work: {len(batch.train) - len(trained)} rows without a gradient")
            if batch_idx >= args.warmup:
                measured["gen_seconds"].append(batch.metrics["rollout/gen_seconds"])
                measured["rollout_seconds"].append(rollout_done.at - clock.begin)
                measured["lengths"].append(batch.metrics["rollout/response_len"])
                measured["rows"].append((len(batch.rollouts), len(batch.expert)))
                logged = trainer.callback_metrics
                measured["cuts"].append((float(logged["train/micro_batches"]), float(logged["train/padding_frac"])))

    class RolloutDone(Callback):
        """After the rollout callback: marks the end of generation + reward + collation."""

        at = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.at = time.perf_counter()

        def on_train_start(self, trainer, pl_module):
            if mixed:  # the engine generates with the policy itself: force the lengths there
                force_lengths(pl_module.policy, ForcedLengths.schedule(args, seed), stop_ids(world))

    rows = args.prompts * args.generations
    data = ChordDataModule(
        tokenizer=str(world / "model"),
        prompt_data=str(world / "prompts.jsonl"),
        expert_data=str(world / "expert.jsonl") if chord else None,
        prompts_per_step=args.prompts,
        num_generations=args.generations,
        expert_data_ratio=args.expert_ratio if chord else 0.0,
        system_prompt=None,
        max_response_length=max(args.max_new_tokens, args.expert_longest + 16),  # keep the long expert rows
        seed=seed,
    )
    mu = args.chord_mu if chord else 0.0
    module = ChordModule(
        model=str(world / "model"),
        micro_batch_size=args.micro_batch_size or rows + data.experts_per_step,  # default: one forward/backward
        max_tokens_per_micro_batch=args.max_tokens if mixed else None,
        padding_free=mixed and args.padding_free,
        max_grad_norm=1.0,
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0),
        objective=Chord(mu_warmup_steps=0, mu_decay_steps=0, mu_peak=mu, mu_valley=mu, token_weighting="phi"),
    )
    rollout_done = RolloutDone()
    rollout = RolloutCallback(
        reward_fn=hash_reward if mixed else exact_match,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=args.max_new_tokens,
        seed=seed,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[StepTimer(), rollout, rollout_done],
    )
    trainer.fit(module, datamodule=data)
    return clock.result(
        gen_seconds=measured["gen_seconds"],
        rollout_seconds=measured["rollout_seconds"],
        response_len=statistics.mean(measured["lengths"]),
        rows=measured["rows"][0],
        cuts=measured["cuts"],
    )


# ----- TRL ----------------------------------------------------------------------------------------------------------
def run_trl(
    world: Path, args: argparse.Namespace, seed: int, out_dir: Path, profiler: cProfile.Profile | None = None
) -> dict:
    """One GRPOTrainer run of ``warmup + steps`` optimizer steps."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    clock = StepClock(args, profiler)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            clock.step_begin()

        def on_step_end(self, args_, state, control, **kwargs):
            clock.step_end(state.global_step)  # already incremented; logging follows this hook

    score = hash_reward if args.lengths == "mixed" else exact_match

    def reward(completions, answer, **kwargs) -> list[float]:
        return [score(c[0]["content"], a) for c, a in zip(completions, answer, strict=True)]

    records = problems(world)
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": r["problem"]}] for r in records],
            "answer": [r["answer"] for r in records],
        }
    )
    config = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        use_vllm=False,
        beta=0.0,
        num_iterations=1,
        gradient_accumulation_steps=1,
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        # GRPOConfig defaults to True (recompute in backward); False is lit_chord's default, so the compute is the same
        gradient_checkpointing=args.trl_gradient_checkpointing,
        max_steps=args.warmup + args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    trainer = GRPOTrainer(
        model=str(world / "model"),
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    trainer.remove_callback(PrinterCallback)
    if args.lengths == "mixed":  # TRL generates with trainer.model (unwrapped: the same object on one CPU process)
        force_lengths(trainer.model, ForcedLengths.schedule(args, seed), stop_ids(world))
    lengths, generate_seconds = [], []
    generate_single_turn = trainer._generate_single_turn

    def timed_generate(*a, **kw):
        start = time.perf_counter()
        completion_ids, logprobs = generate_single_turn(*a, **kw)
        generate_seconds.append(time.perf_counter() - start)
        lengths.append(statistics.mean(len(c) for c in completion_ids))
        stops = set(stop_ids(world))
        if args.lengths == "mixed" and not all(c and c[-1] in stops for c in completion_ids):
            raise RuntimeError("not equal work: a TRL completion was truncated")
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate
    trainer.train()
    if sorted(trainer.eos_token_ids) != sorted({tokenizer.eos_token_id, tokenizer.pad_token_id}):
        raise RuntimeError(f"TRL stops at {trainer.eos_token_ids}, lit_chord at eos and pad")
    return clock.result(
        gen_seconds=generate_seconds[args.warmup :],
        response_len=statistics.mean(lengths[args.warmup :]),
        rows=(args.prompts * args.generations, 0),
    )


# ----- report -------------------------------------------------------------------------------------------------------
# Where a step's time goes: (file suffix, function) whose cumulative time is the phase, per framework. Phases are
# disjoint calls, so "other" (the framework's loop, hooks, metric gathering) is the profiled total minus their sum.
PHASES = {
    "lit_chord GRPO": [
        ("generate (HF generate, KV cache)", "lit_chord/engines/transformers_engine.py", "generate"),
        ("reward", "lit_chord/rollout_callback.py", "score"),
        ("collate rows", "lit_chord/datamodule.py", "collate_rollouts"),
        ("forward (log-probs)", "lit_chord/scorer.py", "forward"),
        ("loss", "lit_chord/objectives/chord.py", "loss"),
        ("backward", "torch/_tensor.py", "backward"),
        ("clip grad norm", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
        ("optimizer step", "lightning/pytorch/core/optimizer.py", "step"),
        ("log metrics", "lit_chord/module.py", "log_step"),
    ],
    "TRL GRPO": [
        ("generate (HF generate, KV cache)", "trl/trainer/grpo_trainer.py", "_generate_single_turn"),
        ("reward", "trl/trainer/grpo_trainer.py", "_calculate_rewards"),
        ("forward (log-probs)", "trl/trainer/grpo_trainer.py", "_get_per_token_logps_and_entropies"),
        ("backward", "accelerate/accelerator.py", "backward"),
        ("clip grad norm", "accelerate/accelerator.py", "clip_grad_norm_"),
        ("optimizer step", "accelerate/optimizer.py", "step"),
        ("log metrics", "transformers/trainer.py", "_maybe_log_save_evaluate"),
    ],
}


def phase_seconds(profiler: cProfile.Profile, framework: str, steps: int) -> dict[str, float]:
    """Seconds per step of each phase in ``PHASES`` (cumulative time of its function), plus "other" and "total"."""
    stats = pstats.Stats(profiler).stats
    phases = {}
    for label, suffix, function in PHASES[framework]:
        # the outermost frame of each phase: its cumulative time already holds any recursive/inner calls
        times = [v[3] for (file, _, name), v in stats.items() if file.endswith(suffix) and name == function]
        phases[label] = max(times, default=0.0) / steps
    total = sum(v[2] for v in stats.values()) / steps
    phases["other (loop, hooks, bookkeeping)"] = total - sum(phases.values())
    phases["total (under cProfile)"] = total
    return phases


def print_profiles(profiles: dict[str, dict[str, float]], top_lit: str) -> None:
    labels = list(dict.fromkeys(label for phases in profiles.values() for label in phases))
    print("\nprofile, seconds per step (cProfile; its overhead inflates Python-heavy parts such as generation):")
    print(f"{'phase':34s}" + "".join(f"{name:>17s}" for name in profiles))
    for label in labels:
        print(f"{label:34s}" + "".join(f"{p[label]:17.3f}" if label in p else f"{'-':>17s}" for p in profiles.values()))
    print("\nlit_chord GRPO, top functions by self time:\n" + top_lit)


def top_functions(profiler: cProfile.Profile, top: int) -> str:
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    text = stream.getvalue()
    return text[text.index("ncalls") :] if "ncalls" in text else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=["tiny", "10m"], default="tiny")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="dropped steps at the start of every run (>= 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt (GRPO group)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 64; 256 with --lengths mixed")
    parser.add_argument(
        "--lengths", choices=["sampled", "mixed"], default="sampled", help="mixed: equal work, log-normal lengths"
    )
    parser.add_argument("--median-length", type=float, default=0.0, help="mixed: median (0: max_new_tokens / 5)")
    parser.add_argument("--sigma", type=float, default=0.75, help="mixed: σ of the log-normal lengths")
    parser.add_argument("--max-tokens", type=int, default=1024, help="mixed: lit_chord's max_tokens_per_micro_batch")
    parser.add_argument("--padding-free", action="store_true", help="mixed: lit_chord's padding_free")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument(
        "--micro-batch-size", type=int, default=0, help="lit_chord rows per forward/backward (0: whole step, as TRL)"
    )
    parser.add_argument("--expert-ratio", type=float, default=0.2, help="CHORD run: share of expert rows")
    parser.add_argument("--chord-mu", type=float, default=0.5, help="CHORD run: constant μ")
    parser.add_argument("--seed", type=int, default=0, help="round r runs both frameworks with seed + r")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default (nproc)")
    parser.add_argument("--no-chord", action="store_true", help="skip the full CHORD step")
    parser.add_argument(
        "--trl-gradient-checkpointing", action="store_true", help="TRL with GRPOConfig's default (more compute)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first measured interval starts at the end of a warm-up step)")
    if args.max_new_tokens is None:
        args.max_new_tokens = 256 if args.lengths == "mixed" else 64
    args.expert_longest = 0

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()

    with tempfile.TemporaryDirectory() as tmp:
        longest = math.ceil(8 * median_length(args)) + 64 if args.lengths == "mixed" else 0  # expert rows
        world = build_world(Path(tmp) / "world", args.model_size, max_positions=64 + max(args.max_new_tokens, longest))
        if args.lengths == "mixed":
            args.expert_longest = lengthen_expert(world, args)
            print(
                f"lengths: log-normal, median {median_length(args):.0f}, sigma {args.sigma}, clipped to "
                f"[2, {args.max_new_tokens}], forced on both sides; hash reward; expert responses up to "
                f"{args.expert_longest} tokens; lit_chord max_tokens_per_micro_batch={args.max_tokens}"
                f"{', padding-free' if args.padding_free else ''}"
            )
        print(
            f"per step: {args.prompts} prompts x {args.generations} completions, max_new_tokens={args.max_new_tokens}, "
            f"lr={args.lr}; {args.rounds} rounds x ({args.warmup} warm-up + {args.steps} measured) steps; "
            f"torch threads {torch.get_num_threads()}"
        )
        runners = {
            "lit_chord GRPO": lambda seed, prof=None: run_lit(world, args, seed, chord=False, profiler=prof),
            "TRL GRPO": lambda seed, prof=None: run_trl(world, args, seed, Path(tmp) / "trl", profiler=prof),
        }
        if not args.no_chord:
            runners["lit_chord CHORD"] = lambda seed, prof=None: run_lit(world, args, seed, chord=True, profiler=prof)
        results: dict[str, list[dict]] = {name: [] for name in runners}
        names = list(runners)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order round by round
                result = runners[name](args.seed + r)
                results[name].append(result)
                print(
                    f"round {r + 1} {name:16s} s/step {' '.join(f'{s:.3f}' for s in result['intervals'])}"
                    f"  (mean completion length {result['response_len']:.1f})",
                    flush=True,
                )
        profiles, top_lit = {}, ""
        if not args.no_profile:
            for name in ("lit_chord GRPO", "TRL GRPO"):
                profiler = cProfile.Profile()
                runners[name](args.seed, profiler)
                profiles[name] = phase_seconds(profiler, name, args.steps)
                if name == "lit_chord GRPO":
                    top_lit = f"(totals over {args.steps} steps)\n" + top_functions(profiler, top=12)

    medians = report(results)
    if profiles:
        print_profiles(profiles, top_lit)
    window = {name: statistics.median(s for r in runs for s in r["windows"]) for name, runs in results.items()}
    print(
        "\nhook-window medians (step-begin -> step-end hook; TRL logs after its step-end hook): "
        + ", ".join(f"{name} {s:.3f} s" for name, s in window.items())
        + f"; TRL/lit_chord GRPO {window['TRL GRPO'] / window['lit_chord GRPO']:.3f}"
    )
    if "lit_chord CHORD" in medians:
        print(f"chord_step_speedup_vs_trl_grpo={medians['TRL GRPO'] / medians['lit_chord CHORD']:.3f}")
    if args.lengths == "mixed":
        for name, runs in results.items():
            cuts = [c for r in runs for c in r.get("cuts", [])]
            if cuts:
                print(
                    f"{name}: {statistics.mean(c[0] for c in cuts):.1f} passes/step, "
                    f"padding {statistics.mean(c[1] for c in cuts):.1%} of the tokens processed"
                )
        update = {name: update_seconds(runs) for name, runs in results.items()}
        generate = {name: gen_median(runs) for name, runs in results.items()}
        print(  # the same generation work on both sides: a ratio far from 1 is machine load, and so noise
            f"generation seconds TRL / lit_chord GRPO (the same work; off 1 = load): "
            f"{generate['TRL GRPO'] / generate['lit_chord GRPO']:.3f}"
        )
        print(f"update_only_speedup_vs_trl={update['TRL GRPO'] / update['lit_chord GRPO']:.3f}")
        print(f"equal_work_speedup_vs_trl={medians['TRL GRPO'] / medians['lit_chord GRPO']:.3f}")
        return
    print(f"grpo_step_speedup_vs_trl={medians['TRL GRPO'] / medians['lit_chord GRPO']:.3f}")


def gen_median(runs: list[dict]) -> float:
    return statistics.median(g for r in runs for g in r["gen_seconds"])


def update_seconds(runs: list[dict]) -> float:
    """Median over measured steps of the step's interval minus its generation: the update and what surrounds it."""
    return statistics.median(s - g for r in runs for s, g in zip(r["intervals"], r["gen_seconds"], strict=True))


def report(results: dict[str, list[dict]]) -> dict[str, float]:
    """Print the table of medians; return each framework's median seconds per step (end-to-end interval)."""
    medians = {}
    print(
        f"\n{'framework':16s} {'rows/step':>12s} {'completion len':>15s} {'s/step':>8s} {'generate s':>11s}"
        f" {'rest s':>7s} {'steps':>6s}"
    )
    for name, runs in results.items():
        intervals = [s for r in runs for s in r["intervals"]]
        medians[name] = statistics.median(intervals)
        generate = statistics.median(s for r in runs for s in r["gen_seconds"])
        rollouts, experts = runs[0]["rows"]
        rows = f"{rollouts}" + (f" + {experts} exp" if experts else "")
        length = statistics.mean(r["response_len"] for r in runs)
        print(
            f"{name:16s} {rows:>12s} {length:15.1f} {medians[name]:8.3f} {generate:11.3f}"
            f" {medians[name] - generate:7.3f} {len(intervals):6d}"
        )
    return medians


if __name__ == "__main__":
    main()
