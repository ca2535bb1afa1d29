"""compare: the commands it launches, the joined logs of a two-phase variant and the table, on fake runs; then one
real two-phase comparison (SFT, then GRPO from its export) as subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lit_chord.experiments import compare, runner
from lit_chord.experiments.plot import read_metrics

CONFIGS = Path(__file__).parent.parent / "configs"


def fake_launch(accuracies_by_variant, commands):
    """Stands in for ``python -m lit_chord fit``: logs one train row per step and a validation after each half."""

    def launch(command, log_path):
        commands.append(command)
        configs = [command[i + 1] for i, arg in enumerate(command) if arg == "--config"]
        run = json.loads(Path(configs[-1]).read_text())  # run.yaml, the last layer
        steps, run_dir = run["trainer"]["max_steps"], Path(run["trainer"]["default_root_dir"])
        variant_dir = run_dir if run_dir.parent.name == "runs" else run_dir.parent  # runs/<v> or phases/<v>/<phase>
        accuracies = accuracies_by_variant[variant_dir.name]
        lines = ["step,train/loss,val/accuracy"] + [f"{s},1.0," for s in range(steps)]
        lines += [f"{steps // 2 - 1},,{accuracies.pop(0)}", f"{steps - 1},,{accuracies.pop(0)}"]
        (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
        (run_dir / "export").mkdir()
        return 0

    return launch


def test_variants_launch_layered_configs_and_the_table_reads_their_logs(tmp_path):
    commands = []
    accuracies = {"chord_mu_s0": [0.25, 0.75], "sft_then_grpo_s0": [0.5, 0.25, 0.25, 0.5]}
    launch = fake_launch(accuracies, commands)
    base = CONFIGS / "demo.yaml"
    results = [
        runner.run_variant(
            name, compare.VARIANTS[name], 0, 8, tmp_path, base, 100, ["--data.val_size", "4"], run=launch
        )
        for name in ("chord_mu", "sft_then_grpo")
    ]
    chord, sft_phase, grpo_phase = commands
    configs = [chord[i + 1] for i, a in enumerate(chord) if a == "--config"]
    assert configs == [str(base), str(tmp_path / "runs" / "chord_mu_s0" / "run.yaml")]
    assert chord[-2:] == ["--data.val_size", "4"]  # overrides come last, so they win
    assert str(CONFIGS / "demo_sft_only.yaml") in sft_phase and str(CONFIGS / "demo_grpo_only.yaml") in grpo_phase

    phases = tmp_path / "phases" / "sft_then_grpo_s0"
    sft_run = json.loads((phases / "0_demo_sft_only" / "run.yaml").read_text())
    grpo_run = json.loads((phases / "1_demo_grpo_only" / "run.yaml").read_text())
    # 8 steps split 4 + 4; validate every min(100, 4) = 4 steps; seed 0 -> data.seed 42 (the demo's own).
    assert (sft_run["trainer"]["max_steps"], sft_run["trainer"]["val_check_interval"]) == (4, 4)
    assert sft_run["model"] == {"init_seed": 0} and sft_run["data"] == {"seed": 42}
    assert sft_run["rollout"] == {"seed": 42}  # merged into the demo's rollout settings, which it leaves alone
    assert grpo_run["model"] == {"model": str(phases / "0_demo_sft_only" / "export"), "random_init": False}
    # demo.yaml pins ModelCheckpoint's dirpath; each run gets its own, every other callback is kept.
    callbacks = json.loads((tmp_path / "runs" / "chord_mu_s0" / "run.yaml").read_text())["trainer"]["callbacks"]
    demo_callbacks = yaml.safe_load(base.read_text())["trainer"]["callbacks"]
    assert [c["class_path"] for c in callbacks] == [c["class_path"] for c in demo_callbacks]
    (checkpoint,) = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoint["init_args"]["dirpath"] == str(tmp_path / "runs" / "chord_mu_s0" / "checkpoints")

    joined = read_metrics(results[1].run_dir / "metrics.csv")
    # phase 2's steps are shifted by phase 1's budget (4): validations at 1, 3 | 5, 7.
    assert joined["val/accuracy"] == [(1, 0.5), (3, 0.25), (5, 0.25), (7, 0.5)]
    assert len(joined["train/loss"]) == 8

    table = compare.results_table(results).splitlines()
    assert table[2] == "| chord_mu | 0 | 0.750 | 0.750 | 8 | 0.0 |"
    assert table[3] == "| sft_then_grpo | 0 | 0.500 | 0.500 | 8 | 0.0 |"


def test_a_rerun_keeps_the_phases_that_finished_with_the_same_inputs(tmp_path):
    commands = []
    launch = fake_launch({"sft_then_grpo_s0": [0.5, 0.25] * 7}, commands)

    def again(overrides=(), reuse=True):
        before = len(commands)
        result = runner.run_variant(
            "sft_then_grpo",
            compare.VARIANTS["sft_then_grpo"],
            0,
            8,
            tmp_path,
            CONFIGS / "demo.yaml",
            4,
            list(overrides),
            launch,
            reuse=reuse,
        )
        run_yamls = [[c[i + 1] for i, a in enumerate(c) if a == "--config"][-1] for c in commands[before:]]
        return result, [Path(run_yaml).parent.name for run_yaml in run_yamls]

    first, launched = again()
    assert launched == ["0_demo_sft_only", "1_demo_grpo_only"] and not first.reused
    second, launched = again()  # both phases finished with the same command, config and config files
    assert launched == [] and second.reused
    assert second.wall_seconds == first.wall_seconds  # the recorded times
    assert read_metrics(second.run_dir / "metrics.csv") == read_metrics(first.run_dir / "metrics.csv")
    _, launched = again(["--data.val_size", "4"])  # another command: both rerun
    assert launched == ["0_demo_sft_only", "1_demo_grpo_only"]
    (tmp_path / "phases" / "sft_then_grpo_s0" / "1_demo_grpo_only" / "finished.json").unlink()  # died in phase 2
    third, launched = again(["--data.val_size", "4"])
    assert launched == ["1_demo_grpo_only"] and not third.reused
    _, launched = again(["--data.val_size", "4"], reuse=False)  # --fresh
    assert launched == ["0_demo_sft_only", "1_demo_grpo_only"]


def test_table_aggregates_seeds_and_names_failures(tmp_path):
    results = []
    for seed, final in [(0, 0.5), (1, 0.75), (2, None)]:
        run_dir = tmp_path / f"s{seed}"
        run_dir.mkdir()
        if final is not None:
            (run_dir / "metrics.csv").write_text(f"step,train/loss,val/accuracy\n0,1.0,\n0,,0.25\n1,1.0,\n1,,{final}\n")
        results.append(runner.RunResult("fixed_mix", seed, run_dir, 120.0, 0 if final is not None else 1))
    row = compare.results_table(results).splitlines()[2]
    # finals 0.5 and 0.75: mean 0.625, range 0.5-0.75; bests the same; 2 steps; 120 s = 2.0 min.
    assert row == "| fixed_mix | 0, 1, 2 (failed: 2) | 0.625 (0.500–0.750) | 0.625 (0.500–0.750) | 0/2 | 2.0 |"


def test_help_starts_with_the_command(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    description = " ".join(capsys.readouterr().out.split("\n\n")[1].split())  # argparse wraps it
    assert description.startswith("python -m lit_chord.experiments.compare: CHORD against its baselines on the demo")


def test_validation_lands_on_the_last_step():
    assert runner.val_interval(600, 100) == 100
    assert runner.val_interval(20, 100) == 20
    assert runner.val_interval(20, 3) == 2  # largest divisor of 20 that is <= 3
    assert runner.split_budget(9, 2) == [4, 5]
    with pytest.raises(ValueError, match="too small"):
        runner.split_budget(1, 2)


@pytest.mark.slow
def test_sft_then_grpo_runs_end_to_end(tmp_path, monkeypatch):
    """Two real subprocess runs: the GRPO phase loads the SFT phase's export; one table row, one PNG."""
    monkeypatch.chdir(CONFIGS.parent)
    small = ["--data.val_size", "2", "--data.prompts_per_step", "2", "--data.num_generations", "2"]
    (result,) = compare.main(["--variants", "sft_then_grpo", "--steps", "2", "--out", str(tmp_path), "--", *small])
    assert result.returncode == 0
    assert (
        "held-out accuracy" in (tmp_path / "phases" / "sft_then_grpo_s0" / "1_demo_grpo_only" / "log.txt").read_text()
    )
    row = (tmp_path / "results.md").read_text().splitlines()[-1]
    assert row.startswith("| sft_then_grpo | 0 | ") and "| 2 |" in row
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
