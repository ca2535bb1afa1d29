"""``python -m lit_chord.experiments.compare``: CHORD against its baselines on the demo, same budget and seeds.

Each variant is ``configs/demo.yaml`` with a variant file layered on it (files hold only what differs):
``chord_mu`` (demo.yaml itself), ``sft_only``, ``grpo_only``, ``fixed_mix``, ``chord_phi``, ``luffy`` (the expert's
trace inside each rollout group, arXiv 2504.14945), and ``sft_then_grpo``,
two runs that split the step budget: SFT, then GRPO starting from the SFT run's export. Runs go one after
another as subprocesses of ``python -m lit_chord fit``, so each is an ordinary run that can be rerun or inspected
alone: ``<out>/runs/<variant>_s<seed>/`` holds its ``run.yaml`` (budget, seed, where it logs and checkpoints),
``log.txt``, ``metrics.csv``, checkpoints, samples and the exported policy (a two-phase variant keeps its phases
under ``<out>/phases/`` and joins their logs, the second phase's steps shifted by the first's budget). A rerun
into the same ``--out`` keeps every run that finished before with the same command, run config and config files
(its ``finished.json``), so an interrupted comparison picks up where it stopped; it replaces the others, and
``--fresh`` replaces them all (do that after changing the package's code).

Seed ``s`` sets ``seed_everything``, ``model.init_seed = s``, ``data.seed = 42 + s`` and ``rollout.seed = 42 + s``, so
seed 0 is the demo itself. Writes ``<out>/results.md`` (final and best held-out greedy accuracy, steps, wall time) and
``<out>/curves.png`` (``lit_chord.experiments.plot``). Arguments after ``--`` go to every run, e.g.
``-- --data.val_size 10``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from lit_chord.experiments import paper_mini
from lit_chord.experiments.plot import plot_runs, read_metrics, require_matplotlib
from lit_chord.experiments.runner import RunResult, launch, run_variant, threads_per_run

# variant -> its phases, each the config files layered on the base; several phases split the step budget.
VARIANTS: dict[str, list[tuple[str, ...]]] = {
    "chord_mu": [()],
    "sft_only": [("demo_sft_only.yaml",)],
    "grpo_only": [("demo_grpo_only.yaml",)],
    "fixed_mix": [("demo_fixed_mix.yaml",)],
    "chord_phi": [("demo_chord_phi.yaml",)],
    "luffy": [("demo_luffy.yaml",)],
    "srft": [("demo_srft.yaml",)],
    "sft_then_grpo": [("demo_sft_only.yaml",), ("demo_grpo_only.yaml",)],
}
ACCURACY = "val/accuracy"


def summary(result: RunResult) -> dict:
    """Final and best held-out accuracy, and optimizer steps taken (rows that logged ``train/loss``, which every step
    logs, even one whose rollouts were all truncated)."""
    path = result.run_dir / "metrics.csv"
    series = read_metrics(path) if path.exists() else {}
    accuracy = [value for _, value in series.get(ACCURACY, [])]
    return {
        "final": accuracy[-1] if accuracy else None,
        "best": max(accuracy) if accuracy else None,
        "steps": len(series.get("train/loss", [])),
    }


def spread(values: list[float | None]) -> str:
    """``0.820`` for one seed, ``0.820 (0.780–0.860)`` (mean, range) for several; ``—`` if none finished."""
    finished = [v for v in values if v is not None]
    if not finished:
        return "—"
    mean = statistics.fmean(finished)
    return f"{mean:.3f}" if len(finished) == 1 else f"{mean:.3f} ({min(finished):.3f}–{max(finished):.3f})"


def results_table(results: list[RunResult]) -> str:
    """A markdown table, one row per variant, aggregated over seeds."""
    lines = [
        f"| variant | seeds | final {ACCURACY} | best {ACCURACY} | steps | wall time (min) |",
        "|---|---|---|---|---|---|",
    ]
    for variant in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == variant]
        summaries = [summary(r) for r in runs]
        failed = [r.seed for r in runs if r.returncode]
        seeds = ", ".join(str(r.seed) for r in runs) + (f" (failed: {', '.join(map(str, failed))})" if failed else "")
        steps = "/".join(sorted({str(s["steps"]) for s in summaries}))
        wall = statistics.fmean(r.wall_seconds for r in runs) / 60
        final, best = spread([s["final"] for s in summaries]), spread([s["best"] for s in summaries])
        lines.append(f"| {variant} | {seeds} | {final} | {best} | {steps} | {wall:.1f} |")
    return "\n".join(lines) + "\n"


# --suite -> defaults of the arguments left out: the demo's variants, or the paper's in miniature (paper_mini.py)
SUITES: dict[str, dict[str, Any]] = {
    "demo": {
        "steps": 600,
        "seeds": [0],
        "out": "runs/compare",
        "base": "configs/demo.yaml",
        "val_every": 100,
        "jobs": 1,
    },
    "paper-mini": {
        "steps": 150,
        "seeds": paper_mini.REPORT_SEEDS,
        "out": "runs/paper-mini",
        "base": "configs/mini.yaml",
        "val_every": 25,
        "jobs": 2,
    },
}
# --quick: a first look at paper-mini in under half an hour (fewer steps and seeds, no tuning; its own folder)
QUICK = {"steps": 60, "seeds": [0, 1], "out": "runs/paper-mini-quick", "val_every": 20}


def main(argv: list[str] | None = None) -> list[RunResult]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--suite", choices=list(SUITES), default="demo", help="demo variants, or paper-mini")
    parser.add_argument("--variants", nargs="+", help="a subset (default: all of the suite's)")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant, all phases (demo 600, paper-mini 150)")
    parser.add_argument("--seeds", nargs="+", type=int, help="demo: 0; paper-mini: 0 1 2 3 4")
    parser.add_argument("--out", type=Path, help="output folder (runs/compare, runs/paper-mini)")
    parser.add_argument("--base", type=Path, help="base config; variant files sit next to it")
    parser.add_argument("--val-every", type=int, help="validate every N steps (a divisor of the budget)")
    parser.add_argument("--jobs", type=int, help="runs side by side, sharing the cores (demo 1, paper-mini 2)")
    parser.add_argument("--fresh", action="store_true", help="rerun even the runs that finished before, same inputs")
    parser.add_argument(
        "--quick", action="store_true", help="paper-mini: a first look (60 steps, seeds 0 1, no tuning)"
    )
    parser.add_argument(
        "--tuning", type=Path, help="paper-mini: learning rates from an earlier tune phase's chosen.json"
    )
    args = parser.parse_args(argv)
    if (args.quick or args.tuning) and args.suite != "paper-mini":
        parser.error("--quick and --tuning are settings of --suite paper-mini")
    for key, default in (SUITES[args.suite] | (QUICK if args.quick else {})).items():
        if getattr(args, key) is None:
            setattr(args, key, Path(default) if isinstance(default, str) else default)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    require_matplotlib(parser)  # before the runs, not after them at the plot
    if args.suite == "paper-mini":
        unknown = sorted(set(args.variants or []) - {v.name for v in paper_mini.SUITE})
        if unknown:
            parser.error(
                f"--variants: {', '.join(unknown)} not in paper-mini ({', '.join(v.name for v in paper_mini.SUITE)})"
            )
        return paper_mini.main(args, overrides)
    unknown = sorted(set(args.variants or []) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: {', '.join(unknown)} not in the demo suite ({', '.join(VARIANTS)})")
    tasks = [(variant, seed) for variant in args.variants or VARIANTS for seed in args.seeds]
    run = partial(launch, threads=threads_per_run(args.jobs))

    def one(task: tuple[str, int]) -> RunResult:
        variant, seed = task
        return run_variant(
            variant,
            VARIANTS[variant],
            seed,
            args.steps,
            args.out,
            args.base,
            args.val_every,
            overrides,
            run,
            reuse=not args.fresh,
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, tasks))
    table = results_table(results)
    header = f"{args.steps} steps per variant, seeds {' '.join(map(str, args.seeds))}, base {args.base}\n\n"
    (args.out / "results.md").write_text(header + table)
    logged = [r.run_dir for r in results if (r.run_dir / "metrics.csv").exists()]
    if logged:
        plot_runs(logged, args.out / "curves.png")
    print(table + f"\n{args.out / 'results.md'}\n{args.out / 'curves.png'}")
    return results


if __name__ == "__main__":
    main()
