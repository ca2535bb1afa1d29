"""What one run of the paper-mini suite scored, read back from its ``metrics.csv``: the numbers at a validation, the
SFT-best step, the compute it spent, and a score's curve over seeds (``band``).

Why a room of its own: the suite selects learning rates, picks SFT-best, fills the table, checks the preconditions
and judges the claims, all from the same few numbers; reading them in one place keeps every consumer on the same
definition (which split selects, which one is reported, what "general ability" averages).

The held-out sets are the world's (``lit_chord.experiments.mini_world``): ``val`` (target sums, selects learning
rates and SFT-best), ``heldout`` (target sums, reported: the paper's AMC), ``transfer`` (the paper's MMLU-Pro
analogue) and the six retention tasks.
"""

from __future__ import annotations

import statistics

from lit_chord.experiments import stats

SELECT_SET, TEST_SET, TRANSFER_SET = "val", "heldout", "transfer"
RETENTION_TASKS = ("copy", "reverse", "sort", "max", "count", "add")
SELECT_BY = f"val/{SELECT_SET}/avg@4"  # learning rates and SFT-best (configs/mini.yaml's PolicyExport.best_by)

# score key -> what it is, for tables: accuracies are fractions, length in tokens, entropy in nats per token
COLUMNS = {
    "in_domain": "in-domain avg@4",
    "in_domain_pass": "in-domain pass@4",
    "transfer": "transfer (greedy)",
    "retention": "retention (6 tasks, greedy)",
    "length": "response length",
    "entropy": "entropy",
}


def value_at(series: dict, key: str, step: int) -> float | None:
    return next((v for s, v in series.get(key, []) if s == step), None)


def validation_steps(series: dict) -> list[int]:
    return sorted({s for s, _ in series.get(SELECT_BY, [])})


def best_step(series: dict, key: str = SELECT_BY) -> int:
    """The trained validation with the highest ``key`` (the first on a tie), as ``PolicyExport(best_by=...)`` keeps
    it: SFT-best, chosen on the validation split, never on the reported one."""
    trained = [(v, -s) for s, v in series.get(key, []) if s > 0]
    if not trained:
        raise ValueError(f"no validation after training logged {key}")
    return -max(trained)[1]


def scores_at(series: dict, step: int, entropy_window: int = 10) -> dict[str, float | None]:
    """One validation's numbers (at optimizer step ``step``) and the mean rollout entropy of the ``entropy_window``
    steps up to it (for step 0, the first step's, measured on the original policy's rollouts before its update)."""
    retention = [value_at(series, f"val/{task}/greedy_acc", step) for task in RETENTION_TASKS]
    entropy = [v for s, v in series.get("train/entropy", []) if (step - entropy_window < s <= step) or s == 1 > step]
    scores = {
        "selection": value_at(series, SELECT_BY, step),
        "in_domain": value_at(series, f"val/{TEST_SET}/avg@4", step),
        "in_domain_greedy": value_at(series, f"val/{TEST_SET}/greedy_acc", step),
        "in_domain_pass": value_at(series, f"val/{TEST_SET}/pass@4", step),
        "transfer": value_at(series, f"val/{TRANSFER_SET}/greedy_acc", step),
        "retention": None if None in retention else statistics.fmean(retention),  # type: ignore[arg-type]
        "length": value_at(series, f"val/{TEST_SET}/response_len", step),
        "entropy": statistics.fmean(entropy) if entropy else None,
    }
    scores.update({f"task/{t}": g for t, g in zip(RETENTION_TASKS, retention, strict=True)})
    return scores


def compute(series: dict, trains_on_rollouts: bool = True) -> dict[str, float]:
    """The run's training compute: optimizer steps (rows that logged ``train/loss``), tokens trained on (Σ
    ``train/tokens``) and tokens generated for training (Σ ``rollout/tokens``; 0 for a run that trains on none,
    whatever it samples to report metrics). Validation is in none of them."""
    generated = sum(v for _, v in series.get("rollout/tokens", [])) if trains_on_rollouts else 0.0
    return {
        "steps": float(len(series.get("train/loss", []))),
        "tokens_trained": sum(v for _, v in series.get("train/tokens", [])),
        "tokens_generated": generated,
    }


def added(*parts: dict[str, float]) -> dict[str, float]:
    """Compute of a chain of runs (SFT, then RL from its best policy): the parts' sums."""
    return {key: sum(part[key] for part in parts) for key in parts[0]}


def band(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every run validated at, with the mean and 95 % interval over runs of score ``key`` there."""
    per_run = [{s: scores_at(series, s)[key] for s in validation_steps(series)} for series in runs]
    steps = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []
    means, lows, highs = [], [], []
    for step in steps:
        values = [v for r in per_run if (v := r[step]) is not None]
        spread = stats.interval_over(values)
        means.append(spread.mean)
        lows.append(spread.low)
        highs.append(spread.high)
    return steps, means, lows, highs
