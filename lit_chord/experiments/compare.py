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
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from lit_chord.experiments.plot import plot_runs, read_metrics

# variant -> its phases, each the config files layered on the base; several phases split the step budget.
VARIANTS: dict[str, list[tuple[str, ...]]] = {
    "chord_mu": [()],
    "sft_only": [("demo_sft_only.yaml",)],
    "grpo_only": [("demo_grpo_only.yaml",)],
    "fixed_mix": [("demo_fixed_mix.yaml",)],
    "chord_phi": [("demo_chord_phi.yaml",)],
    "luffy": [("demo_luffy.yaml",)],
    "sft_then_grpo": [("demo_sft_only.yaml",), ("demo_grpo_only.yaml",)],
}
ACCURACY = "val/accuracy"


@dataclass
class RunResult:
    variant: str
    seed: int
    run_dir: Path  # holds metrics.csv
    wall_seconds: float
    returncode: int
    reused: bool = False  # every phase kept from an earlier run with the same inputs


def val_interval(steps: int, every: int) -> int:
    """The largest divisor of ``steps`` that is at most ``every``, so the last validation is on the last step."""
    every = max(1, min(every, steps))
    return max(d for d in range(1, every + 1) if steps % d == 0)


def split_budget(steps: int, phases: int) -> list[int]:
    """Equal shares of ``steps``; the last phase takes the remainder."""
    share = steps // phases
    if share < 1:
        raise ValueError(f"--steps {steps} is too small for {phases} phases")
    return [share] * (phases - 1) + [steps - share * (phases - 1)]


def run_config(
    run_dir: Path, steps: int, seed: int, val_every: int, init_from: Path | None, layers: list[Path]
) -> dict:
    """The layer on top of the variant's ``layers`` that makes it one run of the comparison (JSON is YAML)."""
    model: dict = {"init_seed": seed}
    if init_from is not None:  # a later phase starts from the previous phase's export
        model = {"model": str(init_from), "random_init": False}
    trainer = {
        "max_steps": steps,
        "val_check_interval": val_interval(steps, val_every),
        "default_root_dir": str(run_dir),
        "logger": [
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},  # log into run_dir itself
            }
        ],
    }
    callbacks = checkpoints_into(run_dir / "checkpoints", layers)
    if callbacks is not None:
        trainer["callbacks"] = callbacks
    rollout = {"seed": 42 + seed}  # seeds differ in their rollouts and validation samples too
    return {
        "seed_everything": seed,
        "trainer": trainer,
        "rollout": rollout,
        "model": model,
        "data": {"seed": 42 + seed},
    }


def checkpoints_into(dirpath: Path, layers: list[Path]) -> list | None:
    """The layered configs' callbacks with every ``ModelCheckpoint`` saving into ``dirpath``, the variant's own folder
    (a config may pin a ``dirpath``, which the runs of a comparison must not share). A list replaces the layers'
    lists, so it repeats every callback."""
    callbacks = None
    for layer in layers:
        callbacks = ((yaml.safe_load(layer.read_text()) or {}).get("trainer") or {}).get("callbacks", callbacks)
    if callbacks is None:
        return None
    result = []
    for callback in callbacks:
        kind = str(callback.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(callback, dict) else ""
        if kind == "ModelCheckpoint":
            callback = {**callback, "init_args": {**(callback.get("init_args") or {}), "dirpath": str(dirpath)}}
        result.append(callback)
    return result


def fit_command(layers: list[Path], run_yaml: Path, overrides: list[str]) -> list[str]:
    configs = [*layers, run_yaml]
    return [sys.executable, "-m", "lit_chord", "fit", *(a for c in configs for a in ("--config", str(c))), *overrides]


def threads_per_run(jobs: int) -> int | None:
    """``OMP_NUM_THREADS`` for each of ``jobs`` runs side by side: the cores shared out; alone, None (torch decides)."""
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None


def launch(command: list[str], log_path: Path, threads: int | None = None) -> int:
    """Run one ``fit`` to completion, its output into ``log_path``; return its exit code. ``threads``: the run's
    ``OMP_NUM_THREADS`` (runs side by side share the cores: README "The demo", on ``OMP_NUM_THREADS``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with log_path.open("w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def run_variant(
    name: str,
    seed: int,
    steps: int,
    out: Path,
    base: Path,
    val_every: int,
    overrides: list[str],
    run=launch,
    phases: list[tuple[str, ...]] | None = None,
    init_from: Path | None = None,
    reuse: bool = True,
) -> RunResult:
    """Run variant ``name`` (its ``phases``, by default ``VARIANTS[name]``) with ``seed``; the first phase starts
    from ``init_from`` (an exported policy) if given, else from the base config's model. With ``reuse``, a phase
    that already finished with the same inputs (``finished.json``) is kept instead of rerun."""
    phases = VARIANTS[name] if phases is None else phases
    run_dir = out / "runs" / f"{name}_s{seed}"
    budgets = split_budget(steps, len(phases))
    if len(phases) == 1:
        phase_dirs = [run_dir]
    else:
        stems = [Path(layers[0]).stem if layers else "base" for layers in phases]
        phase_dirs = [out / "phases" / f"{name}_s{seed}" / f"{i}_{stem}" for i, stem in enumerate(stems)]
    wall, returncode, reused = 0.0, 0, reuse
    done: list[tuple[Path, int]] = []  # (phase folder, offset of its steps in the joined log)
    for phase_dir, variant_files, budget in zip(phase_dirs, phases, budgets, strict=True):
        layers = [base, *(base.parent / file for file in variant_files)]
        config = run_config(phase_dir, budget, seed, val_every, init_from, layers)
        command = fit_command(layers, phase_dir / "run.yaml", overrides)
        inputs = {"command": command, "config": config, "layers": [layer.read_text() for layer in layers]}
        if reused and (finished := finished_before(phase_dir, inputs)) is not None:
            print(f"[compare] {name} seed {seed}: reusing {phase_dir} (finished before, same inputs)", flush=True)
            wall += finished
        else:
            reused = False  # a later phase starts from this one's export, so it reruns too
            shutil.rmtree(phase_dir, ignore_errors=True)
            phase_dir.mkdir(parents=True)
            (phase_dir / "run.yaml").write_text(json.dumps(config, indent=2) + "\n")
            print(f"[compare] {name} seed {seed}: {budget} steps -> {phase_dir}", flush=True)
            start = time.perf_counter()
            returncode = run(command, phase_dir / "log.txt")
            seconds = time.perf_counter() - start
            wall += seconds
            if not returncode:
                (phase_dir / FINISHED).write_text(json.dumps({**inputs, "wall_seconds": seconds}, indent=2) + "\n")
        done.append((phase_dir, sum(budgets[: len(done)])))
        if returncode:
            print(f"[compare] {name} seed {seed} failed (exit {returncode}); see {phase_dir / 'log.txt'}", flush=True)
            break
        init_from = phase_dir / "export"
    if len(phases) > 1:
        run_dir.mkdir(parents=True, exist_ok=True)
        join_metrics([(d / "metrics.csv", offset) for d, offset in done], run_dir / "metrics.csv")
    return RunResult(name, seed, run_dir, wall, returncode, reused)


FINISHED = "finished.json"  # a phase that ran to exit 0: its command, run config and layer files, and its wall time


def finished_before(phase_dir: Path, inputs: dict) -> float | None:
    """The wall seconds of the earlier run in ``phase_dir`` if it finished with exactly these ``inputs``, else None.
    (The package's code is not an input: rerun with ``--fresh`` after changing it.)"""
    path = phase_dir / FINISHED
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    seconds = record.pop("wall_seconds", None)
    return seconds if record == json.loads(json.dumps(inputs)) else None


def join_metrics(parts: list[tuple[Path, int]], out: Path) -> None:
    """Concatenate CSV logs, shifting each part's ``step`` by its offset."""
    rows, fields = [], ["step"]
    for path, offset in parts:
        if not path.exists():
            continue
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("step") not in (None, ""):
                    row["step"] = str(int(float(row["step"])) + offset)
                rows.append(row)
                fields += [k for k in row if k not in fields]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def summary(result: RunResult) -> dict:
    """Final and best held-out accuracy, and optimizer steps taken (rows that logged ``train/mu``, which every step
    logs, even one whose rollouts were all truncated)."""
    path = result.run_dir / "metrics.csv"
    series = read_metrics(path) if path.exists() else {}
    accuracy = [value for _, value in series.get(ACCURACY, [])]
    return {
        "final": accuracy[-1] if accuracy else None,
        "best": max(accuracy) if accuracy else None,
        "steps": len(series.get("train/mu", [])),
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
        "steps": 450,
        "seeds": [0, 1, 2],
        "out": "runs/paper-mini",
        "base": "configs/mini.yaml",
        "val_every": 30,
        "jobs": 2,
    },
}


def main(argv: list[str] | None = None) -> list[RunResult]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--suite", choices=list(SUITES), default="demo", help="demo variants, or paper-mini")
    parser.add_argument("--variants", nargs="+", help="a subset (default: all of the suite's)")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant, all phases (demo 600, paper-mini 450)")
    parser.add_argument("--seeds", nargs="+", type=int, help="demo: 0; paper-mini: 0 1 2")
    parser.add_argument("--out", type=Path, help="output folder (runs/compare, runs/paper-mini)")
    parser.add_argument("--base", type=Path, help="base config; variant files sit next to it")
    parser.add_argument("--val-every", type=int, help="validate every N steps (a divisor of the budget)")
    parser.add_argument("--jobs", type=int, help="runs side by side, sharing the cores (demo 1, paper-mini 2)")
    parser.add_argument("--fresh", action="store_true", help="rerun even the runs that finished before, same inputs")
    args = parser.parse_args(argv)
    for key, default in SUITES[args.suite].items():
        if getattr(args, key) is None:
            setattr(args, key, Path(default) if isinstance(default, str) else default)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.suite == "paper-mini":
        from lit_chord.experiments import paper_mini

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
            variant, seed, args.steps, args.out, args.base, args.val_every, overrides, run, reuse=not args.fresh
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
