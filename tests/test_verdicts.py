"""The paper-mini report: rows read from logs (SFT-best, chains' compute), the preconditions and the verdicts, on
numbers small enough to check by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_suite_log as write_log

from lit_chord.experiments import paper_mini, suite_scores, verdicts
from lit_chord.experiments.runner import RunResult


def scores(in_domain: float, transfer: float = 0.5, retention: float = 1.0, task: float | None = None) -> dict:
    out = {"in_domain": in_domain, "transfer": transfer, "retention": retention}
    return out | {
        f"task/{t}": retention if task is None or t != "copy" else task for t in verdicts.suite_scores.RETENTION_TASKS
    }


def test_rows_read_sft_best_and_a_chain_adds_the_compute_it_started_from(tmp_path):
    results = {}
    for seed in (0, 1):
        write_log(tmp_path / f"sft_s{seed}", {0: 0.1, 2: 0.6, 4: 0.4}, [1.0] * 4, tokens=10.0)
        write_log(tmp_path / f"grpo_s{seed}", {0: 0.1, 4: 0.3}, [1.0] * 4, tokens=5.0)
        write_log(tmp_path / f"sft_best_grpo_s{seed}", {4: 0.7}, [1.0] * 4, tokens=7.0)
        for name, minutes in (("sft", 2.0), ("grpo", 3.0), ("sft_best_grpo", 4.0)):
            results[(name, seed)] = RunResult(name, seed, tmp_path / f"{name}_s{seed}", minutes * 60, 0)
    rows = verdicts.seed_rows(results, paper_mini.BY_NAME)
    assert list(rows) == ["original", "SFT", "SFT-best", "GRPO", "SFT-best → GRPO (equal RL steps)"]
    assert rows["original"][0]["in_domain"] == 0.1 and rows["SFT"][1]["in_domain"] == 0.4
    assert rows["SFT-best"][0]["in_domain"] == 0.6  # step 2, picked on the validation split (same numbers here)
    chain = rows["SFT-best → GRPO (equal RL steps)"][0]
    # own: 4 steps, 28 tokens trained, 56 generated, 4 min; the SFT run before it: 4, 40, 0 (SFT samples only to
    # report), 2 min
    assert (chain["steps"], chain["tokens_trained"], chain["tokens_generated"], chain["wall"]) == (8, 68, 56, 6.0)
    assert rows["GRPO"][0]["tokens_generated"] == 40.0
    assert "| SFT-best → GRPO (equal RL steps) | 8 | 0 | 0 | 6.0 |" in verdicts.compute_table(rows)  # k tokens
    curves = verdicts.sft_curves(results)
    assert curves[0] == {0: 0.1, 2: 0.6, 4: 0.4}


def test_preconditions_by_hand():
    original = {s: scores(0.10, task=1.0) for s in range(5)}
    sft_best = {s: scores(0.30 + 0.01 * s, task=0.5) for s in range(5)}  # +20..+24 points; copy 1.0 -> 0.5
    sft_last = {s: scores(0.25 + 0.01 * s) for s in range(5)}  # 5 points below its best on every seed
    rows = {"original": original, "SFT": sft_last, "SFT-best": sft_best}
    curves = {s: {0: 0.10, 20: 0.02, 40: 0.05, 80: 0.3} for s in range(5)}  # drop to 2 % in the first third
    checks = {c.name.split()[0]: c for c in verdicts.preconditions(rows, curves, expert_accuracy=0.8, budget=80)}
    assert all(c.holds for c in checks.values()), checks
    # gains 20..24 points: mean 22, s = 1.5811, half-width t_{4, 0.975} · s / √5 = 2.776445 · 1.5811 / 2.2361 = 1.963
    assert checks["P2"].evidence == "SFT-best − original: +22.0 [+20.0, +24.0] points"
    assert "copy -50.0 [-50.0, -50.0]" in checks["P3a"].evidence
    assert checks["P3b"].evidence.endswith("-8.0 [-8.0, -8.0] points")  # 2 % − 10 % on every seed
    # An expert no better than the original, SFT that lifts by 5 points, no drop and no overfit: all four fail.
    weak = {"original": original, "SFT": sft_best, "SFT-best": {s: scores(0.15, task=1.0) for s in range(5)}}
    flat = {s: {0: 0.10, 20: 0.12, 80: 0.15} for s in range(5)}
    failed = [c.name.split()[0] for c in verdicts.preconditions(weak, flat, 0.1, 80) if not c.holds]
    assert failed == ["P1", "P2", "P3a", "P3b", "P3c"]


@pytest.mark.parametrize(
    ("chord", "expected"),
    [(0.40, "agrees"), (0.20, "disagrees"), (None, "inconclusive")],
)
def test_a_claim_against_the_strongest_baseline(chord, expected):
    """CHORD-φ against the strongest in-domain baseline (GRPO at 30 %, above LUFFY's 25 %), paired by seed."""
    rows = {
        "GRPO": {s: scores(0.30 + 0.02 * s) for s in range(5)},
        "LUFFY": {s: scores(0.25) for s in range(5)},
        "CHORD-φ": {s: scores((chord if chord is not None else 0.30 + (-1) ** s * 0.05) + 0.02 * s) for s in range(5)},
    }
    assert verdicts.strongest(rows, "in_domain") == "GRPO"
    line = next(
        line
        for line in verdicts.verdict_table(rows).splitlines()
        if "CHORD-φ beats the strongest baseline in-domain" in line
    )
    assert "(GRPO)" in line and line.endswith(f"| {expected} |")


def test_an_interval_needs_two_seeds_for_a_verdict():
    rows = {"GRPO": {0: scores(0.3)}, "CHORD-φ": {0: scores(0.5)}}
    line = next(line for line in verdicts.verdict_table(rows).splitlines() if "strongest baseline in-domain" in line)
    assert line.endswith("| — |")


def test_band_is_the_mean_and_t_interval_over_runs(tmp_path: Path):
    for i, accuracy in enumerate((0.2, 0.4)):
        write_log(tmp_path / str(i), {0: 0.1, 2: accuracy}, [1.0, 1.0])
    runs = [verdicts.read_metrics(tmp_path / str(i) / "metrics.csv") for i in range(2)]
    steps, means, lows, highs = suite_scores.band(runs, "in_domain")
    assert steps == [0, 2] and means == pytest.approx([0.1, 0.3])
    # two runs: mean ± t_{1, 0.975} · s / √2 = 0.3 ± 12.7062 · 0.1414 / 1.4142 = 0.3 ± 1.2706
    assert lows[1] == pytest.approx(0.3 - 1.27062, abs=1e-4) and highs[1] == pytest.approx(0.3 + 1.27062, abs=1e-4)


def test_the_tuning_table_shows_each_grid_and_the_rates_taken_from_stages():
    tuning = {
        "grid": {"sft": {"0.0001": 0.2, "0.001": None}},
        "chosen": {"sft": 1e-4, "sft_half": 1e-4},
    }
    assert verdicts.tuning_table(tuning).splitlines() == [
        "| variant | lr 0.0001 | lr 0.001 | chosen |",
        "|---|---|---|---|",
        "| sft | 20.0 | — | 0.0001 |",
        "| sft_half |  |  | 0.0001 (its stages') |",
    ]
    assert (
        verdicts.tuning_table({"grid": {}, "chosen": {"grpo": 3e-4}})
        == "| variant | lr |\n|---|---|\n| grpo | 0.0003 |\n"
    )


def test_the_original_entropy_is_the_mean_of_every_rl_runs_first_rollouts_whatever_their_order(tmp_path):
    """Each RL run samples its first rollouts from the original policy with its own draws: the original row takes
    their mean (0.2 and 0.4 -> 0.3), not the first run's, so the cell does not depend on the order runs come in."""
    for name, entropy in (("grpo", 0.2), ("chord_phi", 0.4)):
        write_log(tmp_path / name, {0: 0.1, 4: 0.3}, [entropy] * 4)
    rows = {}
    for order in (("grpo", "chord_phi"), ("chord_phi", "grpo")):
        results = {(name, 0): RunResult(name, 0, tmp_path / name, 60.0, 0) for name in order}
        rows[order] = verdicts.seed_rows(results, paper_mini.BY_NAME)["original"][0]
    assert {round(r["entropy"], 9) for r in rows.values()} == {0.3}
    assert all(r["in_domain"] == 0.1 for r in rows.values())
