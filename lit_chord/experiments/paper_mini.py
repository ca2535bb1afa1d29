"""``python -m lit_chord.experiments.compare --suite paper-mini``: the paper's Table 1 in miniature, against baselines
done right, on a CPU.

Why it is built this way: a comparison of SFT+RL methods says something only if (1) the expert is worth imitating,
so that imitation has something to add (the world, ``mini_world``, and the preconditions printed above the table);
(2) every baseline is tuned as carefully as CHORD, as the 2026 replications found many papers' were not; (3) the
compute each variant spent is on the table; (4) seeds give intervals, and each claim gets a verdict from a paired
difference, not from two means that happen to differ.

Two phases, each resumable (a run that finished before with the same inputs is kept, ``runner.run_variant``):

1. **tune**: every variant with a grid of its own at each learning rate of ``GRID``, on ``TUNE_SEED`` (not a
   reporting seed), scored on the *validation* split (``suite_scores.SELECT_BY``), never on the reported one. The
   rule, fixed before any reported run: the highest validation avg@4 of the policy the variant reports (its last
   step; SFT: its best validation, the SFT-best policy); a tie goes to the smaller learning rate. SFT-best → GRPO's RL
   stage is tuned from the tuned SFT's best policy. ``<out>/tune/chosen.json`` holds every score and the choices.
2. **report**: every variant at its chosen learning rate on each of ``REPORT_SEEDS``; ``<out>/results.md`` (the
   preconditions, the table with 95 % intervals, compute, each retention task's change, the verdicts) and
   ``<out>/curves.png``.

Every variant starts from the same pretrained policy (``configs/mini.yaml``) with the same batch, warm-up and step
budget; only the objective (the demo's overlays, ``configs/demo_*.yaml``) and the tuned learning rate differ. SFT →
GRPO is run at two budgets: the paper's (GRPO for the full budget after the full SFT run: twice the steps) and equal
steps (SFT for half, GRPO for half from the half-run's best policy).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from lit_chord.experiments import suite_scores, verdicts
from lit_chord.experiments.plot import pyplot, read_metrics
from lit_chord.experiments.runner import RunResult, launch, run_variant, threads_per_run

# The learning rates every variant is tried at. Five, not the first tune phase's three: four of its seven choices sat
# on an edge of {1e-4, 3e-4, 1e-3}, so every grid gained a step at each end (the same for all; README, Tuning).
GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
TUNE_SEED = 100
REPORT_SEEDS = [0, 1, 2, 3, 4]  # compare's default --seeds for this suite
WEIGHT_DECAY = 0.01  # configs/mini.yaml's, kept when the learning rate is set


@dataclass(frozen=True)
class MiniVariant:
    name: str
    label: str
    layers: tuple[str, ...]  # config files layered on configs/mini.yaml
    starts_from: str | None = None  # a variant whose best policy (same seed, ``export_best``) this one starts from
    share: float = 1.0  # its share of the suite's step budget
    lr_of: str | None = None  # takes the learning rate chosen for that variant instead of a grid of its own
    in_table: bool = True  # False: a stage that another variant starts from

    @property
    def trains_on_rollouts(self) -> bool:
        return self.layers != SFT


SFT, GRPO = ("mini_sft.yaml",), ("demo_grpo_only.yaml",)
SUITE = [
    MiniVariant("sft", "SFT", SFT),
    MiniVariant("grpo", "GRPO", GRPO),
    MiniVariant("luffy", "LUFFY", ("demo_luffy.yaml",)),
    MiniVariant("srft", "SRFT", ("demo_srft.yaml",)),
    MiniVariant("chord_mu", "CHORD-μ", ()),
    MiniVariant("chord_phi", "CHORD-φ", ("demo_chord_phi.yaml",)),
    MiniVariant("sft_best_grpo", verdicts.SFT_RL_PAPER_BUDGET, GRPO, starts_from="sft"),
    MiniVariant("sft_half", "SFT, half budget", SFT, share=0.5, lr_of="sft", in_table=False),
    MiniVariant("sft_half_grpo", verdicts.SFT_RL_EQUAL_STEPS, GRPO, "sft_half", share=0.5, lr_of="sft_best_grpo"),
    # SFT run four times as long, for the precondition that SFT overfits past its best (the paper's Fig. on MATH-500)
    MiniVariant("sft_long", "SFT, 4× budget", SFT, share=4.0, lr_of="sft"),
]
BY_NAME = {v.name: v for v in SUITE}


def lr_settings(lr: float) -> dict:
    """The run-config fragment that sets the learning rate (the optimizer as configs/mini.yaml's)."""
    init_args = {"lr": lr, "weight_decay": WEIGHT_DECAY}
    return {"model": {"optimizer": {"class_path": "torch.optim.AdamW", "init_args": init_args}}}


def variant_steps(variant: MiniVariant, steps: int) -> int:
    return max(1, round(steps * variant.share))


def selection_score(variant: MiniVariant, series: dict) -> float | None:
    """What tuning maximizes: the validation avg@4 of the policy the variant reports (SFT: its best validation)."""
    steps = suite_scores.validation_steps(series)
    if not steps:
        return None
    step = suite_scores.best_step(series) if variant.layers == SFT else steps[-1]
    return suite_scores.value_at(series, suite_scores.SELECT_BY, step)


def choose(scores: dict[float, float | None]) -> float:
    """The learning rate with the highest score; a tie goes to the smaller one. Failed runs (None) never win."""
    finished = {lr: s for lr, s in scores.items() if s is not None}
    if not finished:
        raise RuntimeError("every run of the grid failed")
    return max(sorted(finished), key=lambda lr: (finished[lr], -lr))


def dependencies_first(variants: list[MiniVariant]) -> list[MiniVariant]:
    """The variants ordered so that each comes after the one it starts from (submitted in this order, a worker never
    waits on a run no worker has taken)."""
    ordered: list[MiniVariant] = []
    while len(ordered) < len(variants):
        for variant in variants:
            ready = variant.starts_from is None or any(v.name == variant.starts_from for v in ordered)
            if variant not in ordered and ready:
                ordered.append(variant)
    return ordered


@dataclass
class Suite:
    """One phase's settings: where it writes, the budget, and how each run is launched."""

    out: Path
    base: Path
    steps: int
    val_every: int
    overrides: list[str]
    jobs: int
    run: Callable[[list[str], Path], int] = launch  # runner.launch, or a stand-in in tests
    reuse: bool = True

    def run_one(
        self, variant: MiniVariant, seed: int, lr: float, run_name: str, init_from: Path | None, reuse: bool
    ) -> RunResult:
        return run_variant(
            variant.name,
            [variant.layers],
            seed,
            variant_steps(variant, self.steps),
            self.out,
            self.base,
            max(1, round(self.val_every * variant.share)),  # every run validates about as often
            self.overrides,
            self.run,
            init_from,
            reuse,
            settings=lr_settings(lr),
            run_name=run_name,
        )


def tune(suite: Suite, variants: list[MiniVariant], seed: int = TUNE_SEED) -> dict:
    """Phase 1: the grid for every variant that has one of its own; returns (and writes to ``chosen.json``) each
    grid's validation scores and the chosen learning rate per variant (``lr_of`` variants take their source's)."""
    tuned = [v for v in dependencies_first(variants) if v.lr_of is None]
    futures: dict[tuple[str, float], Future[RunResult | None]] = {}

    def scores(name: str) -> dict[float, float | None]:
        results = {lr: futures[(name, lr)].result() for lr in GRID}
        return {lr: score_of(BY_NAME[name], r) for lr, r in results.items()}

    def one(variant: MiniVariant, lr: float) -> RunResult | None:
        init_from, reuse = None, suite.reuse
        if variant.starts_from is not None:
            source_lr = choose(scores(variant.starts_from))
            source = futures[(variant.starts_from, source_lr)].result()
            if source is None or source.returncode:
                return None
            init_from, reuse = source.run_dir / "export_best", reuse and source.reused
        return suite.run_one(variant, seed, lr, f"{variant.name}_lr{lr:g}_s{seed}", init_from, reuse)

    with ThreadPoolExecutor(suite.jobs) as pool:
        for variant in tuned:
            for lr in GRID:
                futures[(variant.name, lr)] = pool.submit(one, variant, lr)
        grid = {v.name: {f"{lr:g}": s for lr, s in scores(v.name).items()} for v in tuned}
    chosen = {v.name: choose({float(lr): s for lr, s in grid[v.name].items()}) for v in tuned}
    chosen |= {v.name: chosen[v.lr_of] for v in variants if v.lr_of is not None and v.lr_of in chosen}
    record = {
        "rule": f"highest {suite_scores.SELECT_BY} (SFT: at its best validation; others: at the last), "
        "tie -> smaller lr",
        "seed": seed,
        "steps": suite.steps,
        "grid": grid,
        "chosen": chosen,
    }
    suite.out.mkdir(parents=True, exist_ok=True)
    (suite.out / "chosen.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def untuned(variants: list[MiniVariant], base: Path) -> dict:
    """``--quick``'s stand-in for tuning: the base config's learning rate for every variant."""
    lr = float(yaml.safe_load(base.read_text())["model"]["optimizer"]["init_args"]["lr"])
    rule = "not tuned (--quick): the base config's lr for every variant"
    return {"rule": rule, "seed": None, "steps": 0, "grid": {}, "chosen": {v.name: lr for v in variants}}


def recorded(path: Path, variants: list[MiniVariant]) -> dict:
    """A ``chosen.json`` written by an earlier tune phase; every variant asked for must have its choice there."""
    record = json.loads(path.read_text())
    missing = sorted(v.name for v in variants if v.name not in record.get("chosen", {}))
    if missing:
        raise SystemExit(f"{path}: no tuned learning rate for {', '.join(missing)}; rerun without --tuning")
    return record | {"rule": f"{record['rule']} (recorded in {path})"}


def score_of(variant: MiniVariant, result: RunResult | None) -> float | None:
    if result is None or result.returncode or not (result.run_dir / "metrics.csv").exists():
        return None
    return selection_score(variant, read_metrics(result.run_dir / "metrics.csv"))


def report(
    suite: Suite, variants: list[MiniVariant], chosen: dict[str, float], seeds: list[int]
) -> dict[tuple[str, int], RunResult]:
    """Phase 2: every variant at its chosen learning rate, each seed; a variant that starts from another's best
    policy waits for that run (submitted earlier, so the wait cannot deadlock) and is reused only if that run was."""
    futures: dict[tuple[str, int], Future[RunResult | None]] = {}

    def one(variant: MiniVariant, seed: int) -> RunResult | None:
        init_from, reuse = None, suite.reuse
        if variant.starts_from is not None:
            source = futures[(variant.starts_from, seed)].result()
            if source is None or source.returncode:
                print(f"[paper-mini] {variant.name} seed {seed}: skipped, {variant.starts_from} failed", flush=True)
                return None
            init_from, reuse = source.run_dir / "export_best", reuse and source.reused
        return suite.run_one(variant, seed, chosen[variant.name], f"{variant.name}_s{seed}", init_from, reuse)

    with ThreadPoolExecutor(suite.jobs) as pool:
        for seed in seeds:  # seed after seed, so that a phase cut short leaves whole seeds
            for variant in dependencies_first(variants):
                futures[(variant.name, seed)] = pool.submit(one, variant, seed)
        results = {key: future.result() for key, future in futures.items()}
    return {key: result for key, result in results.items() if result is not None}


def with_sources(names: set[str]) -> list[MiniVariant]:
    """The suite's variants named, with every variant they start from or take a learning rate from."""
    needed, grew = set(names), True
    while grew:
        more = {x for n in needed for x in (BY_NAME[n].starts_from, BY_NAME[n].lr_of) if x is not None}
        grew = not more <= needed
        needed |= more
    return [v for v in SUITE if v.name in needed]


def plot_suite(runs: dict[tuple[str, int], Path], out: Path) -> Path:
    """Mean and 95 % band over seeds against each run's optimizer steps (a chain's RL stage from its own step 0):
    in-domain avg@4, transfer, retention, entropy, and the 4× SFT run alone (in-domain, retention, response length:
    the paper's "shift, readapt, overfit")."""
    plt = pyplot()
    logs: dict[str, list[dict]] = {}
    for (name, _), path in sorted(runs.items()):
        if (path / "metrics.csv").exists():
            logs.setdefault(name, []).append(read_metrics(path / "metrics.csv"))
    fig, axes = plt.subplots(1, 5, figsize=(25, 4))
    panels = (("in_domain", "in-domain avg@4 (test)"), ("transfer", "transfer"), ("retention", "retention"))
    for ax, (key, title) in zip(axes[:4], (*panels, ("entropy", "entropy (last 10 steps' rollouts)")), strict=True):
        for name, series in logs.items():
            if name in ("sft_long", "sft_half"):  # the SFT panel has the long run; the half run is a stage
                continue
            steps, means, lows, highs = suite_scores.band(series, key)
            if steps:
                line = ax.plot(steps, means, marker="o", markersize=2, label=BY_NAME[name].label)[0]
                ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.12)
        ax.set_title(f"{title}: mean, 95 % band over seeds", fontsize=9)
        ax.set_ylim(0, 1 if key != "entropy" else None)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax, twin = axes[4], axes[4].twinx()
    for key, axis, style, title in (
        ("in_domain", ax, "-", "in-domain avg@4"),
        ("retention", ax, "--", "retention"),
        ("length", twin, ":", "response length (right)"),
    ):
        steps, means, lows, highs = suite_scores.band(logs.get("sft_long", logs.get("sft", [])), key)
        color = "black" if axis is ax else "grey"
        axis.plot(steps, means, style, marker="o", markersize=2, label=title, color=color)
        axis.fill_between(steps, lows, highs, color=color, alpha=0.12)
    ax.set_title("SFT alone, 4× budget: shift, readapt, overfit (mean, 95 % band over seeds)", fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def expert_accuracy(base: Path) -> float:
    """The share of the expert's demonstrations that are right, as the world recorded it next to the policy."""
    model = Path(yaml.safe_load(base.read_text())["model"]["model"])
    return json.loads((model / "pretraining.json").read_text())["expert_accuracy"]


def main(args, overrides: list[str]) -> list[RunResult]:
    """``compare --suite paper-mini``: tune (or reuse the tuning), report, write ``results.md`` and ``curves.png``."""
    variants = with_sources(set(args.variants or [v.name for v in SUITE]))  # compare.main refused unknown names
    start = time.perf_counter()
    run = partial(launch, threads=threads_per_run(args.jobs))
    quick = " (QUICK: a first look with untuned learning rates, not the reported protocol)" if args.quick else ""

    def phase(name: str) -> Suite:
        return Suite(args.out / name, args.base, args.steps, args.val_every, overrides, args.jobs, run, not args.fresh)

    if args.quick:
        tuning = untuned(variants, args.base)
    elif args.tuning is not None:  # an earlier tune phase's record, e.g. docs/paper_mini_tuning.json
        tuning = recorded(args.tuning, variants)
    else:
        tuning = tune(phase("tune"), variants, TUNE_SEED)
    print(f"[paper-mini] learning rates{quick}: " + json.dumps(tuning["chosen"]), flush=True)
    results = report(phase("report"), variants, tuning["chosen"], args.seeds)
    minutes = (time.perf_counter() - start) / 60
    rates = verdicts.grid_rates(tuning)  # as tuned: a recorded phase (--tuning) may have had another grid than GRID
    tuned = "not tuned" if args.quick else f"tuned on seed {tuning['seed']} over {', '.join(rates)}"
    tuned += f" (recorded in {args.tuning})" if args.tuning and not args.quick else ""
    header = (
        f"# paper-mini{quick}\n\n{args.steps} steps per variant, learning rates {tuned}, reported on seeds "
        f"{' '.join(map(str, args.seeds))}; base {args.base}; --jobs {args.jobs}; "
        f"{minutes:.1f} min in all (runs finished before and reused count as 0)\n\n"
    )
    text = header + verdicts.report_text(results, BY_NAME, tuning, expert_accuracy(args.base), args.steps)
    (args.out / "results.md").write_text(text)
    rows = verdicts.seed_rows(results, BY_NAME)  # every number of the tables, per seed
    (args.out / "scores.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot_suite({key: result.run_dir for key, result in results.items()}, args.out / "curves.png")
    print(text + f"\n{args.out / 'results.md'}\n{args.out / 'curves.png'}")
    return list(results.values())
