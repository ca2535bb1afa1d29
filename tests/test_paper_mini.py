"""The paper-mini suite: its selection rules by hand, the order and starting points of its runs (tuning, then
reporting) on fake launches, and one real chain of runs through ``compare --suite paper-mini`` (slow tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_suite_log as write_log

from lit_chord.experiments import compare, paper_mini, suite_scores
from lit_chord.experiments.plot import read_metrics

CONFIGS = Path(__file__).parent.parent / "configs"


def test_the_learning_rate_with_the_best_validation_wins_and_a_tie_goes_to_the_smaller():
    assert paper_mini.choose({1e-4: 0.2, 3e-4: 0.5, 1e-3: 0.4}) == 3e-4
    assert paper_mini.choose({1e-3: 0.5, 1e-4: 0.5, 3e-4: None}) == 1e-4
    with pytest.raises(RuntimeError, match="every run of the grid failed"):
        paper_mini.choose({1e-4: None})


def test_sft_is_scored_at_its_best_validation_and_the_others_at_their_last(tmp_path):
    write_log(tmp_path, {0: 0.1, 2: 0.5, 3: 0.5, 4: 0.2}, [1.0] * 4)
    series = read_metrics(tmp_path / "metrics.csv")
    assert suite_scores.best_step(series) == 2  # the first of the tie
    assert paper_mini.selection_score(paper_mini.BY_NAME["sft"], series) == 0.5
    assert paper_mini.selection_score(paper_mini.BY_NAME["grpo"], series) == 0.2
    assert suite_scores.compute(series) == {"steps": 4.0, "tokens_trained": 40.0, "tokens_generated": 80.0}
    assert suite_scores.compute(series, trains_on_rollouts=False)["tokens_generated"] == 0.0


def test_every_variant_comes_after_the_one_it_starts_from_and_brings_its_sources():
    chosen = paper_mini.with_sources({"sft_half_grpo"})
    assert {v.name for v in chosen} == {"sft", "sft_best_grpo", "sft_half", "sft_half_grpo"}  # lr and start sources
    ordered = [v.name for v in paper_mini.dependencies_first(list(reversed(paper_mini.SUITE)))]
    for variant in paper_mini.SUITE:
        if variant.starts_from:
            assert ordered.index(variant.starts_from) < ordered.index(variant.name)


class FakeFit:
    """Stands in for ``python -m lit_chord fit``: the score of a run is given by its learning rate (tuning) or a
    constant, and it writes an export_best so that runs can start from it."""

    def __init__(self, score_by_lr: dict[str, dict[float, float]]):
        self.score_by_lr, self.launched = score_by_lr, []

    def __call__(self, command, log_path):
        run = json.loads(Path([command[i + 1] for i, a in enumerate(command) if a == "--config"][-1]).read_text())
        run_dir = Path(run["trainer"]["default_root_dir"])
        lr = run["model"]["optimizer"]["init_args"]["lr"]
        self.launched.append((run_dir.name, lr, run["model"].get("model"), run["trainer"]["max_steps"]))
        name = run_dir.name.split("_lr")[0].rsplit("_s", 1)[0]
        score = self.score_by_lr.get(name, {}).get(lr, 0.3)
        write_log(run_dir, {0: 0.1, run["trainer"]["max_steps"]: score}, [1.0] * run["trainer"]["max_steps"])
        (run_dir / "export_best").mkdir()
        return 0


def suite(tmp_path: Path, fit: FakeFit, jobs: int = 2) -> paper_mini.Suite:
    return paper_mini.Suite(tmp_path, CONFIGS / "mini.yaml", 4, 2, [], jobs, fit)


def test_tuning_runs_each_grid_on_the_tuning_seed_and_rl_after_sft_starts_from_the_tuned_sft(tmp_path, monkeypatch):
    monkeypatch.setattr(paper_mini, "GRID", (1e-4, 3e-4, 1e-3))
    fit = FakeFit({"sft": {1e-4: 0.2, 3e-4: 0.6, 1e-3: 0.4}, "sft_best_grpo": {1e-4: 0.5, 3e-4: 0.1, 1e-3: 0.1}})
    variants = paper_mini.with_sources({"sft_half_grpo", "grpo"})
    record = paper_mini.tune(suite(tmp_path, fit), variants, seed=100)
    assert record["chosen"] == {
        "sft": 3e-4,
        "grpo": 1e-4,
        "sft_best_grpo": 1e-4,
        "sft_half": 3e-4,
        "sft_half_grpo": 1e-4,
    }
    assert record["grid"]["sft"] == {"0.0001": 0.2, "0.0003": 0.6, "0.001": 0.4}
    assert json.loads((tmp_path / "chosen.json").read_text()) == record
    launched = {name: (lr, start, steps) for name, lr, start, steps in fit.launched}
    assert len(launched) == 9  # three grids of three; sft_half and sft_half_grpo take their sources' choices
    for lr in paper_mini.GRID:
        name = f"sft_best_grpo_lr{lr:g}_s100"
        assert launched[name] == (lr, str(tmp_path / "runs" / "sft_lr0.0003_s100" / "export_best"), 4)
    assert launched["grpo_lr0.0001_s100"][1] is None  # the base config's pretrained policy


def test_reporting_uses_the_chosen_rates_and_chains_start_from_their_seeds_best_policy(tmp_path):
    fit = FakeFit({})
    variants = paper_mini.with_sources({"sft_best_grpo", "sft_half_grpo"})
    chosen = {"sft": 3e-4, "sft_best_grpo": 1e-4, "sft_half": 3e-4, "sft_half_grpo": 1e-4}
    results = paper_mini.report(suite(tmp_path, fit), variants, chosen, [0, 1])
    assert set(results) == {(v.name, s) for v in variants for s in (0, 1)}
    launched = {name: (lr, start, steps) for name, lr, start, steps in fit.launched}
    for seed in (0, 1):
        assert launched[f"sft_s{seed}"] == (3e-4, None, 4)
        assert launched[f"sft_half_s{seed}"] == (3e-4, None, 2)  # half the budget
        assert launched[f"sft_best_grpo_s{seed}"] == (1e-4, str(tmp_path / "runs" / f"sft_s{seed}" / "export_best"), 4)
        half = str(tmp_path / "runs" / f"sft_half_s{seed}" / "export_best")
        assert launched[f"sft_half_grpo_s{seed}"] == (1e-4, half, 2)
    names = [name for name, *_ in fit.launched]
    assert names.index("sft_s0") < names.index("sft_best_grpo_s0")

    # A rerun keeps what finished; a run that reran makes the runs started from it rerun too.
    fit.launched.clear()
    paper_mini.report(suite(tmp_path, fit), variants, chosen, [0, 1])
    assert fit.launched == []
    (tmp_path / "runs" / "sft_s0" / "finished.json").unlink()
    paper_mini.report(suite(tmp_path, fit), variants, chosen, [0, 1])
    assert sorted(name for name, *_ in fit.launched) == ["sft_best_grpo_s0", "sft_s0"]


def test_a_recorded_tuning_must_cover_every_variant(tmp_path):
    record = {"rule": "highest", "seed": 100, "steps": 4, "grid": {}, "chosen": {"sft": 3e-4, "grpo": 1e-4}}
    (tmp_path / "chosen.json").write_text(json.dumps(record))
    loaded = paper_mini.recorded(tmp_path / "chosen.json", paper_mini.with_sources({"grpo"}))
    assert loaded["chosen"]["grpo"] == 1e-4 and loaded["rule"].endswith(f"(recorded in {tmp_path / 'chosen.json'})")
    with pytest.raises(SystemExit, match="no tuned learning rate for luffy; rerun without --tuning"):
        paper_mini.recorded(tmp_path / "chosen.json", paper_mini.with_sources({"luffy"}))


def test_quick_and_tuning_are_paper_mini_settings(capsys):
    for flag in (["--quick"], ["--tuning", "chosen.json"]):
        with pytest.raises(SystemExit):
            compare.main(flag)
    assert "--quick and --tuning are settings of --suite paper-mini" in capsys.readouterr().err


@pytest.mark.slow
def test_the_suite_tunes_then_reports_sft_then_grpo_from_the_best_export(tmp_path, monkeypatch):
    """Real runs: the SFT grid and the SFT-best → GRPO grid on the tuning seed (2 steps each), then SFT and GRPO from
    SFT-best's export on one reporting seed; the report, its per-seed scores and the plot."""
    monkeypatch.chdir(CONFIGS.parent)
    monkeypatch.setattr(paper_mini, "GRID", (1e-4, 1e-3))
    small = ["--data.val_size", "3", "--data.prompts_per_step", "2", "--data.num_generations", "2"]
    args = ["--suite", "paper-mini", "--variants", "sft_best_grpo", "--steps", "2", "--seeds", "0", "--val-every", "1"]
    results = compare.main([*args, "--jobs", "2", "--out", str(tmp_path), "--", *small])
    run_dirs = {(r.variant, r.seed): r.run_dir for r in results}
    assert set(run_dirs) == {("sft", 0), ("sft_best_grpo", 0)}
    best = json.loads((run_dirs[("sft", 0)] / "export_best" / "best.json").read_text())
    series = read_metrics(run_dirs[("sft", 0)] / "metrics.csv")
    assert best["step"] == suite_scores.best_step(series) and best["metric"] == suite_scores.SELECT_BY
    grpo_run = json.loads((run_dirs[("sft_best_grpo", 0)] / "run.yaml").read_text())
    assert grpo_run["model"]["model"] == str(run_dirs[("sft", 0)] / "export_best")
    chosen = json.loads((tmp_path / "tune" / "chosen.json").read_text())
    assert set(chosen["grid"]) == {"sft", "sft_best_grpo"} and chosen["seed"] == paper_mini.TUNE_SEED
    assert grpo_run["model"]["optimizer"]["init_args"]["lr"] == chosen["chosen"]["sft_best_grpo"]
    report = (tmp_path / "results.md").read_text()
    for piece in (
        "learning rates tuned on seed 100 over 0.0001, 0.001, reported",  # the grid as tuned
        "P1 ",
        "P2 ",
        "P3a ",
        "| original | 1 |",
        "| SFT-best | 1 |",
        "| SFT-best → GRPO (equal RL steps) | 1 |",
    ):
        assert piece in report
    assert set(json.loads((tmp_path / "scores.json").read_text())) >= {"original", "SFT", "SFT-best"}
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
