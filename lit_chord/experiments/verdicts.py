"""The paper-mini suite's report: the preconditions, the table with 95 % intervals, compute per variant, and a
verdict per claim of the paper, all from the reported runs.

Why the preconditions come first: the paper's claims are about what imitation adds to RL, and they can only be
tested in a world where imitation helps. If the expert is not better than the policy (P1), SFT on its data does not
lift the target (P2), or SFT shows none of the costs the paper describes (P3), the verdicts below cannot speak to
the paper, and the report says so at its top instead of hiding it.

Every comparison is paired by seed (``stats.paired_difference``): a seed fixes the data order and the validation
samples of every variant, so the differences cancel the variance the runs share. "The strongest baseline" of a
column is the baseline with the highest mean there, picked on the reported numbers, which favours the baseline.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from lit_chord.experiments import stats, suite_scores
from lit_chord.experiments.plot import read_metrics
from lit_chord.experiments.runner import RunResult

Rows = dict[str, dict[int, dict]]  # row label -> seed -> scores (suite_scores.scores_at, plus compute and wall)


class Variant(Protocol):  # paper_mini.MiniVariant, as far as the report reads it
    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def starts_from(self) -> str | None: ...
    @property
    def in_table(self) -> bool: ...
    @property
    def trains_on_rollouts(self) -> bool: ...


SFT_RL_EQUAL_STEPS = "SFT-best → GRPO (equal steps)"  # SFT + RL steps = the others' steps
SFT_RL_PAPER_BUDGET = "SFT-best → GRPO (equal RL steps)"  # the paper's: RL for as many steps as the others
BASELINES = (
    "SFT-best",
    "GRPO",
    "LUFFY",
    "SRFT",
    SFT_RL_PAPER_BUDGET,
    SFT_RL_EQUAL_STEPS,
)
BEST_OF = {"sft": "SFT-best", "sft_long": "SFT-best, 4× budget"}  # SFT runs whose best validation is a row too
LONG = ("SFT, 4× budget", "SFT-best, 4× budget")
P2_MIN_GAIN = 0.10  # SFT-best's in-domain avg@4 over the original's, at least (the paper: +12.1 on AMC)


def logs(results: Mapping[tuple[str, int], RunResult]) -> dict[tuple[str, int], dict]:
    """Each finished run's metrics, by (variant, seed)."""
    finished = {key: r for key, r in results.items() if not r.returncode and (r.run_dir / "metrics.csv").exists()}
    return {key: read_metrics(r.run_dir / "metrics.csv") for key, r in finished.items()}


def seed_rows(results: Mapping[tuple[str, int], RunResult], variants: Mapping[str, Variant]) -> Rows:
    """Per table row and seed, the scores of the policy the row reports and the compute behind it: ``original`` (the
    step-0 validation of a run that starts from the pretrained policy), ``SFT`` (last), ``SFT-best`` (its best
    validation on the validation split), and every other variant's last validation. A variant that starts from
    another's policy adds that run's compute and wall time to its own."""
    series = logs(results)
    rows: Rows = {}

    def cost(name: str, seed: int) -> dict:
        variant = variants[name]
        own = suite_scores.compute(series[(name, seed)], variant.trains_on_rollouts)
        own["wall"] = results[(name, seed)].wall_seconds / 60
        source = variant.starts_from
        return suite_scores.added(own, cost(source, seed)) if source and (source, seed) in series else own

    first_entropies: dict[int, list[float]] = {}  # per seed, each RL run's first rollouts: the original policy's
    for (name, seed), logged in sorted(series.items(), key=lambda kv: kv[0][1]):
        steps, variant = suite_scores.validation_steps(logged), variants[name]
        if not steps:
            continue
        if variant.starts_from is None and 0 in steps:  # the same validation in every such run
            at_start = suite_scores.scores_at(logged, 0)
            rows.setdefault("original", {}).setdefault(seed, at_start)
            if at_start["entropy"] is not None:
                first_entropies.setdefault(seed, []).append(at_start["entropy"])
        if variant.in_table:
            rows.setdefault(variant.label, {})[seed] = suite_scores.scores_at(logged, steps[-1]) | cost(name, seed)
        if name in BEST_OF:
            best = suite_scores.best_step(logged)
            rows.setdefault(BEST_OF[name], {})[seed] = suite_scores.scores_at(logged, best) | cost(name, seed)
    for seed, entropies in first_entropies.items():  # their mean: the same whatever order the runs come in
        rows["original"][seed]["entropy"] = statistics.fmean(entropies)
    order = ["original", "SFT", "SFT-best"] + [v.label for v in variants.values() if v.in_table and v.name != "sft"]
    order += [BEST_OF["sft_long"]]
    return {label: rows[label] for label in order if label in rows}


def sft_curves(results: Mapping[tuple[str, int], RunResult]) -> dict[int, dict[int, float | None]]:
    """Per seed, the SFT run's in-domain avg@4 (reported split) at each validation."""
    curves = {}
    for (name, seed), logged in logs(results).items():
        if name == "sft":
            key = f"val/{suite_scores.TEST_SET}/avg@4"
            curves[seed] = {s: suite_scores.value_at(logged, key, s) for s in suite_scores.validation_steps(logged)}
    return curves


def column(row: Mapping[int, dict], key: str) -> dict[int, float]:
    return {seed: scores[key] for seed, scores in row.items() if scores.get(key) is not None}


def interval(row: Mapping[int, dict], key: str) -> stats.Interval:
    values = list(column(row, key).values())
    return stats.interval_over(values)


def paired(rows: Rows, a: str, b: str, key: str) -> stats.Interval | None:
    if a not in rows or b not in rows:
        return None
    try:
        return stats.paired_difference(column(rows[a], key), column(rows[b], key))
    except ValueError:
        return None


def points(difference: stats.Interval | None) -> str:
    return (
        "—"
        if difference is None
        else f"{difference.mean * 100:+.1f} [{difference.low * 100:+.1f}, {difference.high * 100:+.1f}]"
    )


@dataclass
class Check:
    name: str
    holds: bool
    evidence: str


def preconditions(
    rows: Rows, curves: Mapping[int, Mapping[int, float | None]], expert_accuracy: float, budget: int
) -> list[Check]:
    """P1-P3 from the reported runs (issue text: the world's premise)."""
    checks = []
    original = interval(rows.get("original", {}), "in_domain")
    checks.append(
        Check(
            "P1 the expert beats the original policy at the target, and is imperfect",
            original.n > 0 and original.high < expert_accuracy < 1.0,
            f"expert's traces right {expert_accuracy * 100:.1f} %; original in-domain avg@4 {original.format()} %",
        )
    )
    gain = paired(rows, "SFT-best", "original", "in_domain")
    checks.append(
        Check(
            f"P2 SFT-best lifts in-domain avg@4 by ≥ {P2_MIN_GAIN * 100:.0f} points, interval above 0",
            gain is not None and gain.mean >= P2_MIN_GAIN and gain.low > 0,
            f"SFT-best − original: {points(gain)} points",
        )
    )
    lost = {}
    for task in suite_scores.RETENTION_TASKS:
        change = paired(rows, "SFT-best", "original", f"task/{task}")
        if change is not None and change.high < 0:
            lost[task] = change
    checks.append(
        Check(
            "P3a SFT-best degrades at least one retention task (interval below 0)",
            bool(lost),
            "; ".join(f"{t} {points(c)}" for t, c in lost.items()) or "none below 0",
        )
    )
    shift = early_drop(curves, column(rows.get("original", {}), "in_domain"), budget)
    checks.append(
        Check(
            "P3b SFT shifts: an early in-domain drop below the original (first third of the run)",
            shift is not None and shift.high < 0,
            f"lowest early validation − original: {points(shift)} points",
        )
    )
    last, best = LONG if all(label in rows for label in LONG) else ("SFT", "SFT-best")
    overfit = paired(rows, last, best, "in_domain")
    checks.append(
        Check(
            "P3c SFT overfits past its best (last − best, on the reported split, interval below 0)",
            overfit is not None and overfit.high < 0,
            f"{last} (last) − its best: {points(overfit)} points",
        )
    )
    return checks


def early_drop(
    curves: Mapping[int, Mapping[int, float | None]], original: Mapping[int, float], budget: int
) -> stats.Interval | None:
    """Per seed, the SFT run's lowest in-domain avg@4 among validations in its first third, minus the original's."""
    lows = {}
    for seed, curve in curves.items():
        early = [v for step, v in curve.items() if 0 < step <= budget / 3 and v is not None]
        if early and seed in original:
            lows[seed] = min(early) - original[seed]
    return stats.t_interval(list(lows.values())) if lows else None


# claim, the paper's figures, the rows compared (a − b > 0 is the paper's direction), the column
CLAIMS = [
    ("SFT-best beats the original in-domain", "55.9 vs 43.8 (AMC)", "SFT-best", "original", "in_domain"),
    ("SFT-best gains general ability (transfer)", "38.4 vs 24.7 (MMLU-Pro)", "SFT-best", "original", "transfer"),
    ("GRPO beats the original in-domain", "52.1 vs 43.8", "GRPO", "original", "in_domain"),
    ("SFT-best → RL beats SFT-best in-domain", "58.4 vs 55.9", SFT_RL_PAPER_BUDGET, "SFT-best", "in_domain"),
    ("SFT-best → RL beats GRPO in-domain", "58.4 vs 52.1", SFT_RL_PAPER_BUDGET, "GRPO", "in_domain"),
    ("CHORD-μ beats the strongest baseline in-domain", "60.8 vs 58.4", "CHORD-μ", "strongest", "in_domain"),
    ("CHORD-φ beats the strongest baseline in-domain", "62.5 vs 58.4", "CHORD-φ", "strongest", "in_domain"),
    ("CHORD-φ beats the strongest baseline on transfer", "56.2 vs 51.3 (MMLU-Pro)", "CHORD-φ", "strongest", "transfer"),
    (
        "CHORD-φ beats the strongest baseline on retention",
        "(MMLU-Pro: 56.2 vs 51.3)",
        "CHORD-φ",
        "strongest",
        "retention",
    ),
    ("CHORD-φ beats CHORD-μ on transfer", "56.2 vs 43.3 (MMLU-Pro)", "CHORD-φ", "CHORD-μ", "transfer"),
    (
        "CHORD-φ beats tuned SFT → RL at equal steps in-domain",
        "2026 replications: no, SFT → RL wins",
        "CHORD-φ",
        SFT_RL_EQUAL_STEPS,
        "in_domain",
    ),
]


def strongest(rows: Rows, key: str) -> str | None:
    present = [b for b in BASELINES if b in rows and column(rows[b], key)]
    return max(present, key=lambda b: interval(rows[b], key).mean) if present else None


def verdict_table(rows: Rows) -> str:
    lines = ["| claim | paper | miniature: a − b, points [95 % interval] | verdict |", "|---|---|---|---|"]
    for claim, paper, a, b, key in CLAIMS:
        if b == "strongest":
            b = strongest(rows, key) or "—"
            claim = f"{claim} ({b})"
        difference = paired(rows, a, b, key)
        judged = "—" if difference is None or difference.n < 2 else stats.verdict(difference, +1)
        lines.append(f"| {claim} | {paper} | {points(difference)} | {judged} |")
    return "\n".join(lines) + "\n"


SCALES = {"length": (1.0, 1), "entropy": (1.0, 2)}  # the rest are fractions shown in %


def results_table(rows: Rows) -> str:
    head = "| variant | seeds | " + " | ".join(suite_scores.COLUMNS.values()) + " |"
    lines = [head, "|---" * (len(suite_scores.COLUMNS) + 2) + "|"]
    for label, row in rows.items():
        cells = [interval(row, key).format(*SCALES.get(key, (100.0, 1))) for key in suite_scores.COLUMNS]
        lines.append(f"| {label} | {len(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compute_table(rows: Rows) -> str:
    lines = [
        "| variant | optimizer steps | tokens trained on (k) | tokens generated for training (k) | wall time (min) |",
        "|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        if label == "original":
            continue
        means = {key: interval(row, key).mean for key in ("steps", "tokens_trained", "tokens_generated", "wall")}
        cells = [
            f"{means['steps']:.0f}",
            f"{means['tokens_trained'] / 1e3:.0f}",
            f"{means['tokens_generated'] / 1e3:.0f}",
        ]
        cells.append(f"{means['wall']:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def retention_table(rows: Rows) -> str:
    tasks = suite_scores.RETENTION_TASKS
    lines = ["| variant | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for label in rows:
        if label == "original":
            continue
        cells = [points(paired(rows, label, "original", f"task/{task}")) for task in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def grid_rates(tuning: dict) -> list[str]:
    """The learning rates a tuning record's grids tried (as written there, ``"0.0001"``); none for an untuned one."""
    return list(next(iter(tuning["grid"].values()), {}))


def tuning_table(tuning: dict) -> str:
    """Each grid's validation-split score (%) per learning rate, and the choice; without a grid, the rates used."""
    grid = tuning["grid"]
    if not grid:
        return "| variant | lr |\n|---|---|\n" + "".join(f"| {n} | {lr:g} |\n" for n, lr in tuning["chosen"].items())
    rates = grid_rates(tuning)
    lines = ["| variant | " + " | ".join(f"lr {lr}" for lr in rates) + " | chosen |", "|---" * (len(rates) + 2) + "|"]
    for name, scores in grid.items():
        cells = ["—" if s is None else f"{s * 100:.1f}" for s in scores.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tuning['chosen'][name]:g} |")
    others = {n: lr for n, lr in tuning["chosen"].items() if n not in grid}
    lines += [f"| {n} | " + " | ".join("" for _ in rates) + f" | {lr:g} (its stages') |" for n, lr in others.items()]
    return "\n".join(lines) + "\n"


def report_text(
    results: Mapping[tuple[str, int], RunResult],
    variants: Mapping[str, Variant],
    tuning: dict,
    expert_accuracy: float,
    budget: int,
) -> str:
    """The whole report, in markdown: preconditions first, then tuning, tables and verdicts."""
    rows = seed_rows(results, variants)
    checks = preconditions(rows, sft_curves(results), expert_accuracy, budget)
    failed = [c.name.split()[0] for c in checks if not c.holds]
    status = f"**PRECONDITIONS FAILED: {', '.join(failed)}** (the verdicts below cannot speak to the paper's premise)"
    lines = [status if failed else "**Preconditions: all hold.**", ""]
    lines += [f"- {'holds' if c.holds else 'FAILS'}: {c.name}. {c.evidence}" for c in checks]
    lines += ["", "## Learning rates", "", f"Rule: {tuning['rule']}.", "", tuning_table(tuning)]
    lines += ["", "## Results (%, mean ± 95 % t-interval half-width over seeds; length in tokens, entropy in nats)", ""]
    lines += [
        results_table(rows),
        "## Compute per variant (mean over seeds; a chain adds the runs it started from)",
        "",
    ]
    lines += [compute_table(rows), "## Each retention task's change from the original (points, paired by seed)", ""]
    lines += [retention_table(rows), "## The paper's claims", "", verdict_table(rows)]
    return "\n".join(lines) + "\n"
