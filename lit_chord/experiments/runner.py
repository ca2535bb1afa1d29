"""One variant of a comparison, run as ordinary ``python -m lit_chord fit`` subprocesses, phase after phase.

A variant is a list of phases, each the config files layered on a base config; several phases split the step budget,
each later phase starting from the previous one's export. ``compare`` (the demo's suite) and ``paper_mini`` (the paper
in miniature) both run their variants through ``run_variant``; a phase that already finished with the same inputs
(its ``finished.json``) is kept instead of rerun.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml


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
    phases: list[tuple[str, ...]],
    seed: int,
    steps: int,
    out: Path,
    base: Path,
    val_every: int,
    overrides: list[str],
    run=launch,
    init_from: Path | None = None,
    reuse: bool = True,
    settings: dict | None = None,
    run_name: str | None = None,
) -> RunResult:
    """Run variant ``name``, its ``phases`` (each the files layered on ``base``), with ``seed``; the first phase starts
    from ``init_from`` (an exported policy) if given, else from the base config's model. ``settings`` (a config
    fragment, e.g. a learning rate) goes on top of every phase's run config; ``run_name`` names the run's folder
    (default ``<name>_s<seed>``). With ``reuse``, a phase that already finished with the same inputs
    (``finished.json``) is kept instead of rerun."""
    run_name = run_name or f"{name}_s{seed}"
    run_dir = out / "runs" / run_name
    budgets = split_budget(steps, len(phases))
    if len(phases) == 1:
        phase_dirs = [run_dir]
    else:
        stems = [Path(layers[0]).stem if layers else "base" for layers in phases]
        phase_dirs = [out / "phases" / run_name / f"{i}_{stem}" for i, stem in enumerate(stems)]
    wall, returncode, reused = 0.0, 0, reuse
    done: list[tuple[Path, int]] = []  # (phase folder, offset of its steps in the joined log)
    for phase_dir, variant_files, budget in zip(phase_dirs, phases, budgets, strict=True):
        layers = [base, *(base.parent / file for file in variant_files)]
        config = merged(run_config(phase_dir, budget, seed, val_every, init_from, layers), settings or {})
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


def merged(config: dict, settings: dict) -> dict:
    """``config`` with ``settings`` on top, nested mappings merged key by key (as a later ``--config`` layer)."""
    out = dict(config)
    for key, value in settings.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


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
