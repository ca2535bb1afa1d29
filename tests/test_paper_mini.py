"""The paper-mini suite: the numbers it reads from logs, its table by hand, the order and starting points of its runs,
and one real SFT → SFT-best → GRPO chain through ``compare --suite paper-mini``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_chord.experiments import compare, paper_mini

CONFIGS = Path(__file__).parent.parent / "configs"
TASKS = paper_mini.GENERAL_TASKS


def write_log(run_dir: Path, validations: dict[int, tuple[float, float]], entropies: list[float]) -> None:
    """A metrics.csv with one train row per step (entropy) and validations {step: (in-domain avg@4, general)}:
    greedy = avg@4, pass@4 = 2·avg@4, every general task at the same accuracy, response length 10 + step."""
    keys = ["greedy_acc", "avg@4", "pass@4", "response_len"]
    header = ["step", "train/entropy"] + [f"val/heldout/{k}" for k in keys] + [f"val/{t}/greedy_acc" for t in TASKS]
    lines = [",".join(header)]
    for step, entropy in enumerate(entropies, start=1):
        lines.append(",".join([str(step), str(entropy)] + [""] * (len(header) - 2)))
    for step, (avg, general) in validations.items():
        values = [avg, avg, 2 * avg, 10 + step] + [general] * len(TASKS)
        lines.append(",".join([str(step), ""] + [str(v) for v in values]))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_scores_best_step_and_table_by_hand(tmp_path):
    runs = {}
    for seed, (late, general) in enumerate([(0.2, 0.8), (0.4, 0.6)]):
        sft = tmp_path / f"sft_s{seed}"
        # the SFT run peaks at step 2 (0.5) and ends at step 4 (late); the first tie wins, so step 2
        write_log(sft, {0: (0.1, 1.0), 2: (0.5, 0.9), 3: (0.5, 0.7), 4: (late, general)}, [1.0, 2.0, 3.0, 4.0])
        runs[("sft", seed)] = sft
    series = paper_mini.read_metrics(runs[("sft", 0)] / "metrics.csv")
    assert paper_mini.best_step(series) == 2
    assert paper_mini.scores_at(series, 4, entropy_window=2)["entropy"] == 3.5  # steps 3 and 4: (3 + 4) / 2
    assert paper_mini.scores_at(series, 0)["entropy"] == 1.0  # the first step's rollouts: the original policy's

    rows = paper_mini.row_scores(runs, [0, 1])
    assert list(rows) == ["original", "SFT", "SFT-best"]
    lines = paper_mini.results_tables(rows).splitlines()
    # SFT (last): avg@4 0.2 and 0.4 -> 30.0 ± 14.1 (std of (20, 40) = sqrt(200) = 14.14); pass@4 twice that;
    # general 80 and 60 -> 70.0 ± 14.1; length 14 both; entropy mean of steps 1-4 = 2.5 both.
    assert lines[3] == "| SFT | 2 | 30.0 ± 14.1 | 30.0 ± 14.1 | 60.0 ± 28.3 | 70.0 ± 14.1 | 14.0 ± 0.0 | 2.50 ± 0.00 |"
    assert lines[4].startswith("| SFT-best | 2 | 50.0 ± 0.0 | 50.0 ± 0.0 | 100.0 ± 0.0 | 90.0 ± 0.0 | 12.0 ± 0.0 |")
    # per-task change from the original (100%): SFT -20 and -40 points -> -30.0 ± 14.1 in every column
    assert lines[-2] == "| SFT | " + " | ".join(["-30.0 ± 14.1"] * len(TASKS)) + " |"


def test_runs_start_after_what_they_start_from(tmp_path):
    """With two workers the SFT-best → GRPO runs wait for their seed's SFT run and start from its export_best."""
    launched = []

    def fake_launch(command, log_path):
        run = json.loads(Path([command[i + 1] for i, a in enumerate(command) if a == "--config"][-1]).read_text())
        run_dir = Path(run["trainer"]["default_root_dir"])
        launched.append((run_dir.name, run["model"].get("model")))
        write_log(run_dir, {0: (0.1, 1.0), 2: (0.3, 0.9)}, [1.0, 1.0])
        (run_dir / "export_best").mkdir()
        assert run["rollout"] == {"seed": 42 + run["seed_everything"]}
        return 0

    variants = [v for v in paper_mini.SUITE if v.name in ("sft_best_grpo", "grpo", "sft")]
    results = paper_mini.run_suite(variants, 2, [0, 1], tmp_path, CONFIGS / "mini.yaml", 1, [], 2, fake_launch)
    assert set(results) == {(v, s) for v in ("sft", "grpo", "sft_best_grpo") for s in (0, 1)}
    names = [name for name, _ in launched]
    for seed in (0, 1):
        assert names.index(f"sft_s{seed}") < names.index(f"sft_best_grpo_s{seed}")
        start = dict(launched)[f"sft_best_grpo_s{seed}"]
        assert start == str(tmp_path / "runs" / f"sft_s{seed}" / "export_best")
    assert dict(launched)["grpo_s0"] is None  # the base config's pretrained policy

    # A rerun keeps what finished; a run that reran makes the runs started from it rerun too.
    launched.clear()
    paper_mini.run_suite(variants, 2, [0, 1], tmp_path, CONFIGS / "mini.yaml", 1, [], 2, fake_launch)
    assert launched == []
    (tmp_path / "runs" / "sft_s0" / "finished.json").unlink()
    paper_mini.run_suite(variants, 2, [0, 1], tmp_path, CONFIGS / "mini.yaml", 1, [], 2, fake_launch)
    assert sorted(name for name, _ in launched) == ["sft_best_grpo_s0", "sft_s0"]


@pytest.mark.slow
def test_the_suite_runs_sft_then_grpo_from_the_best_export(tmp_path, monkeypatch):
    """Real runs: SFT (2 steps, validating after each), then GRPO from the SFT run's best export; table and plot."""
    monkeypatch.chdir(CONFIGS.parent)
    small = ["--data.val_size", "3", "--data.prompts_per_step", "2", "--data.num_generations", "2"]
    args = ["--suite", "paper-mini", "--variants", "sft_best_grpo", "--steps", "2", "--seeds", "0", "--val-every", "1"]
    results = compare.main([*args, "--jobs", "1", "--out", str(tmp_path), "--", *small])
    run_dirs = {(r.variant, r.seed): r.run_dir for r in results}
    assert set(run_dirs) == {("sft", 0), ("sft_best_grpo", 0)}
    best = json.loads((run_dirs[("sft", 0)] / "export_best" / "best.json").read_text())
    series = paper_mini.read_metrics(run_dirs[("sft", 0)] / "metrics.csv")
    assert best["step"] == paper_mini.best_step(series) and best["metric"] == paper_mini.SELECT_BY
    grpo_run = json.loads((run_dirs[("sft_best_grpo", 0)] / "run.yaml").read_text())
    assert grpo_run["model"]["model"] == str(run_dirs[("sft", 0)] / "export_best")
    table = (tmp_path / "results.md").read_text()
    for label in ("| original | 1 |", "| SFT | 1 |", "| SFT-best | 1 |", "| SFT-best → GRPO | 1 |"):
        assert label in table
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
