"""Runs a user can stop, find and resume (``lit_chord.runs``): each run has its own folder; ``--ckpt_path last``
continues the most recent run, in its folder, and refuses other hyper-parameters; Ctrl-C and SIGTERM save the step
that completes and print the command that resumes, and the resumed run's per-step log equals an uninterrupted run's.

The folder rules are checked with in-process fits on the tiny world (about a second each); the signals with real
``python -m lit_chord`` processes, started together (each costs ~5 s of imports on a 2-core machine).
"""

from __future__ import annotations

import csv
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from lit_chord.__main__ import main
from lit_chord.cli import command_line
from lit_chord.errors import ConfigError, UserError
from lit_chord.records import DataError
from lit_chord.runs import prepare_fit, resume_command

REPO = Path(__file__).parent.parent
TIMING = ("rollout/gen_seconds", "rollout/sync_seconds", "train/update_seconds", "train/tokens_per_second")
STEPS = 10  # the subprocess runs': checkpoints every 4 steps, validation every 3, an interrupt at a random step


class PauseAt(Callback):
    """At the start of (0-based) step ``step``, after the rollouts: write ``marker`` and wait (a minute at most) for
    ``<marker>.go``, so that the test's signal arrives in the middle of a step."""

    def __init__(self, step: int | None = None, marker: str = "") -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while not Path(f"{self.marker}.go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)


def write_config(path: Path, world: Path, root: Path, max_steps: int = 2, pause: int | None = None) -> Path:
    """A small CHORD run logging under ``root``; its ModelCheckpoint has no ``dirpath``, as the shipped configs."""
    config = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": [
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": ""}}
            ],
            "callbacks": [
                {"class_path": "test_runs.PauseAt", "init_args": {"step": pause, "marker": str(root / "paused")}},
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True, "every_n_train_steps": 4 if pause is not None else 1},
                },
            ],
        },
        "rollout": {"max_new_tokens": 8, "reward_fn": "test_resume.digit_share", "val_num_samples": 1},
        "model": {
            "model": str(world / "model"),
            "objective": {
                "class_path": "lit_chord.objectives.chord.Chord",
                "init_args": {"mu_warmup_steps": 2, "mu_decay_steps": 2, "mu_peak": 0.8, "mu_valley": 0.2},
            },
            "micro_batch_size": 4,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
        },
        "data": {
            "tokenizer": str(world / "model"),
            "prompt_data": str(world / "prompts.jsonl"),
            "expert_data": str(world / "expert.jsonl"),
            "val_data": str(world / "heldout.jsonl"),
            **{"val_size": 2, "prompts_per_step": 2, "num_generations": 4, "expert_data_ratio": 0.2},
            **{"system_prompt": None, "max_prompt_length": 64, "max_response_length": 32},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, *args: str):
    return main(["fit", "--config", str(config), *args])


def step_rows(metrics_csv: Path) -> dict[int, dict[str, str]]:
    """The CSV rows by step (training and validation rows of a step merged), as the exact strings written."""
    rows: dict[int, dict[str, str]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            merged = rows.setdefault(int(row["step"]), {})
            merged.update({k: v for k, v in row.items() if v != "" and k not in TIMING})
    return rows


# ----- folders and ``--ckpt_path last`` ---------------------------------------------------------------------------
@pytest.fixture
def runs(tiny_world, tmp_path) -> tuple[Path, Path]:
    """A config logging under ``root``, and two fresh 2-step runs of it: ``version_0``, ``version_1``. (Built for each
    test: a copy in another folder would be another run to the checkpoints, whose state names their folder.)"""
    root = tmp_path / "runs"
    config = write_config(tmp_path / "config.yaml", tiny_world, root)
    fit(config)
    fit(config)
    return root, config


def test_fresh_runs_of_one_config_never_share_a_checkpoint_folder(runs):
    two_runs, _ = runs
    assert sorted(p.name for p in two_runs.iterdir()) == ["version_0", "version_1"]
    for version in ("version_0", "version_1"):
        files = sorted(p.name for p in (two_runs / version / "checkpoints").iterdir())
        assert files == ["epoch=0-step=2.ckpt", "last.ckpt"]  # no last-v1.ckpt: nothing else writes here
        checkpoint = torch.load(two_runs / version / "checkpoints/last.ckpt", weights_only=False)
        assert checkpoint["run"]["dir"] == str(two_runs / version)
        assert sorted(step_rows(two_runs / version / "metrics.csv")) == [1, 2]  # each trained from step 0
    # The same config, so the same steps: had the second run loaded the first's checkpoint, it would log steps 3-4.
    assert step_rows(two_runs / "version_0/metrics.csv") == step_rows(two_runs / "version_1/metrics.csv")


def test_ckpt_path_last_continues_the_most_recent_run_in_its_folder(runs, capsys):
    root, config = runs
    # version_0 was the last to save (as if resumed after version_1 started): it is the most recent run.
    os.utime(root / "version_0/checkpoints/last.ckpt")
    before = (root / "version_1/metrics.csv").read_text()
    fit(config, "--ckpt_path", "last", "--trainer.max_steps", "4")
    assert f"resuming {root}/version_0 from {root}/version_0/checkpoints/last.ckpt at step 2" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]  # no version_2
    rows = step_rows(root / "version_0/metrics.csv")
    assert sorted(rows) == [1, 2, 3, 4] and "val/accuracy" in rows[3]  # steps 1-2 kept, 3-4 logged after them
    assert (root / "version_1/metrics.csv").read_text() == before
    assert torch.load(root / "version_0/checkpoints/last.ckpt", weights_only=False)["global_step"] == 4


def test_other_hyperparameters_are_refused_with_the_differences_unless_overridden(runs, capsys):
    root, config = runs
    changed = ["--model.objective.mu_peak", "0.5", "--data.prompts_per_step", "3", "--model.micro_batch_size", "2"]
    with pytest.raises(UserError) as refused:
        fit(config, "--ckpt_path", "last", "--trainer.max_steps", "3", *changed)
    message = str(refused.value)
    assert f"{root}/version_1/checkpoints/last.ckpt was trained with other hyper-parameters" in message
    assert message.endswith(
        "model.objective.init_args.mu_peak: 0.8 -> 0.5; data.prompts_per_step: 2 -> 3"
    )  # micro-batching may differ
    assert "--resume_anyway true" in refused.value.hint

    cli = fit(config, "--ckpt_path", "last", "--trainer.max_steps", "3", *changed, "--resume_anyway", "true")
    assert cli.trainer.global_step == 3 and cli.model.objective.mu_peak == 0.5
    assert (
        "--resume_anyway: resuming with changed hyper-parameters: model.objective.init_args.mu_peak"
        in capsys.readouterr().err
    )


def test_a_finished_run_is_not_resumed_silently(runs):
    root, config = runs
    with pytest.raises(UserError, match=r"version_1/checkpoints/last.ckpt is at step 2, and trainer.max_steps is 2"):
        fit(config, "--ckpt_path", "last")


def test_an_explicit_checkpoint_starts_a_new_run_from_it(runs, capsys):
    """Continuing the file's own run would cut its log after the file's step."""
    root, config = runs
    source = root / "version_0/checkpoints/epoch=0-step=2.ckpt"
    fit(config, "--ckpt_path", str(source), "--trainer.max_steps", "3")
    assert f"resuming new run {root}/version_2 from {source} at step 2" in capsys.readouterr().err
    assert sorted(step_rows(root / "version_2/metrics.csv")) == [3] and sorted(
        step_rows(root / "version_0/metrics.csv")
    ) == [1, 2]


def test_the_resume_command_is_the_users_with_ckpt_path_last():
    assert resume_command(["fit", "--config", "a b.yaml", "--ckpt_path", "x.ckpt", "--model.mu_peak=0.5"]) == (
        "python -m lit_chord fit --config 'a b.yaml' --model.mu_peak=0.5 --ckpt_path last"
    )
    assert resume_command(["fit", "--ckpt_path=x.ckpt"]) == "python -m lit_chord fit --ckpt_path last"


def test_ckpt_path_last_without_a_run_is_one_line(tiny_world, tmp_path, capsys):
    config = write_config(tmp_path / "config.yaml", tiny_world, tmp_path / "runs")
    assert command_line(lambda: fit(config, "--ckpt_path", "last")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2] == f"error: --ckpt_path last: no run in {tmp_path}/runs has a checkpoint"
    assert lines[-1].startswith("hint: start a fresh run without --ckpt_path")
    assert not (tmp_path / "runs").exists()  # and it started nothing


def test_a_run_that_fails_before_writing_anything_leaves_no_run_folder(tiny_world, tmp_path):
    config = write_config(tmp_path / "config.yaml", tiny_world, tmp_path / "runs")
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"problem": "Reverse 12.", "answer": null}\n')
    with pytest.raises(DataError, match="field 'answer' is null"):
        fit(config, "--data.prompt_data", str(bad))
    assert not list((tmp_path / "runs").iterdir())  # version_0 was made at the start, and removed
    with pytest.raises(ConfigError, match=r"the output head \(lm_head\) cannot take an adapter"):  # after setup,
        fit(config, "--model.lora.target_modules", "[q_proj, lm_head]")  # when config.yaml is written
    assert not list((tmp_path / "runs").iterdir())
    fit(config)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]  # the next run takes its number


def test_counts_two_ranks_cannot_share_are_refused_before_the_run_has_a_folder(tiny_world, tmp_path):
    """In the one process that exists before ``fit`` starts the other ranks: one line, not one per rank."""
    config = write_config(tmp_path / "config.yaml", tiny_world, tmp_path / "runs")
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.experts_per_step", "3"]
    cli = main(["--config", str(config), *ddp], run=False)
    with pytest.raises(UserError, match=r"data.experts_per_step=3 must be divisible by the world size \(2\)"):
        prepare_fit(cli.trainer, cli.model, cli.datamodule, ckpt_path=None, resume_anyway=False, args=[])
    assert not (tmp_path / "runs").exists()


def test_validate_logs_at_the_checkpoints_step_quietly(runs, tmp_path):
    """``validate --ckpt_path`` scores the weights of step 2: its row, the results table and the sample file say 2,
    not 0 (Lightning restores no loop for ``validate``), and Lightning's "dirpath has changed" warning stays quiet."""
    root, config = runs
    checkpoint = root / "version_0/checkpoints/last.ckpt"
    command = [sys.executable, "-m", "lit_chord", "validate", "--config", str(config), "--ckpt_path", str(checkpoint)]
    process = start([*command, "--trainer.callbacks+=lit_chord.samples.SampleTable"], tmp_path / "validate.log")
    text, returncode = finish(process)
    assert returncode == 0, text[-3000:]
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1", "version_2"]
    rows = step_rows(root / "version_2/metrics.csv")
    assert list(rows) == [2] and "val/accuracy" in rows[2]
    assert re.search(r"│\s+step\s+│\s+2\.0\s+│", text)
    assert [p.name for p in (root / "version_2/samples").iterdir()] == ["step_2.jsonl"]
    assert "dirpath has changed" not in text


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_leave_the_checkpoint_folder_to_the_run(name):
    """A ``dirpath`` in a config is one folder for all of its runs, the folder ``last-v9.ckpt`` piled up in."""
    callbacks = (yaml.safe_load((REPO / "configs" / name).read_text()).get("trainer") or {}).get("callbacks") or []
    checkpoints = [c for c in callbacks if str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    assert all("dirpath" not in (c.get("init_args") or {}) for c in checkpoints)


# ----- stopping: real processes -------------------------------------------------------------------------------------
FAKE_SLURM = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "lit_chord", "SLURM_JOB_ID": "7"}
FAKE_SLURM |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def fit_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "lit_chord", "fit", "--config", str(config)]


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Run ``command`` in the repository, its output into ``log`` (a pipe could fill and block)."""
    paths = os.pathsep.join([str(REPO), str(REPO / "tests")])
    env = {**os.environ, "PYTHONPATH": paths, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with log.open("w") as f:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    process.log = log  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[str, int]:
    process.wait(timeout=timeout)
    return process.log.read_text(), process.returncode  # type: ignore[attr-defined]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.log.read_text()[-3000:]  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stopped(tiny_world, tmp_path_factory) -> dict:
    """Output and exit code of an uninterrupted run; of runs stopped in a random step by SIGINT, by SIGTERM and
    (under a stand-in for SLURM) by SIGUSR1, the requeue signal; and of their resumes: the command the first two
    printed, and the SLURM one's requeued job (the same command, SLURM_RESTART_COUNT=1)."""
    work = tmp_path_factory.mktemp("stopped")
    signals = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGUSR1": signal.SIGUSR1}
    pauses = {name: random.randrange(1, STEPS - 1) for name in signals}  # 0-based: the stop comes in step pause + 1
    print(f"stopped in steps { ({name: pause + 1 for name, pause in pauses.items()}) }")
    configs = {
        name: write_config(work / f"{name}.yaml", tiny_world, work / name, STEPS, p) for name, p in pauses.items()
    }
    whole = start(fit_command(write_config(work / "whole.yaml", tiny_world, work / "whole", STEPS)), work / "whole.log")
    # A stand-in scontrol that records its arguments: never the real one (a local Slurm may run, job 7 may exist).
    bin_dir = work / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {work / "scontrol.args"}\n')
    scontrol.chmod(0o755)
    fake_slurm = {**FAKE_SLURM, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    envs = {"SIGUSR1": fake_slurm}
    running = {name: start(fit_command(c), work / f"{name}.log", envs.get(name)) for name, c in configs.items()}
    results: dict = {"work": work, "pauses": pauses}
    try:
        for name, process in running.items():
            wait_for(work / name / "paused", process)
            process.send_signal(signals[name])
            (work / name / "paused.go").write_text("")
        results |= {name: finish(process) for name, process in running.items()}
        for name in signals:  # before the resumes overwrite it
            results[f"{name} saved"] = torch.load(work / name / "version_0/checkpoints/last.ckpt", weights_only=False)
        resumed = {}
        for name in ("SIGINT", "SIGTERM"):
            command = re.search(r"resume with: (.*)", results[name][0])
            assert command, results[name][0][-3000:]
            resumed[name] = start(shlex.split(command.group(1)), work / f"{name}.resumed.log")
        requeued = {**fake_slurm, "SLURM_RESTART_COUNT": "1"}
        resumed["SIGUSR1"] = start(fit_command(configs["SIGUSR1"]), work / "SIGUSR1.resumed.log", requeued)
        results |= {f"{name} resumed": finish(process) for name, process in resumed.items()}
        results["whole"] = finish(whole)
    finally:
        for process in [whole, *running.values(), *locals().get("resumed", {}).values()]:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.slow  # with the next test, the only users of ``stopped``: 8 CLI runs (~1 min alone on 2 cores)
@pytest.mark.parametrize("name, exit_code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGUSR1", 138)])
def test_a_stop_saves_the_step_in_progress_and_prints_the_command_that_resumes(stopped, name, exit_code):
    text, returncode = stopped[name]
    step, root = stopped["pauses"][name] + 1, stopped["work"] / name
    assert returncode == exit_code, text[-3000:]
    saved = root / "version_0/checkpoints/last.ckpt"
    if name == "SIGUSR1":
        assert f"SIGUSR1: saving a checkpoint once step {step} completes, then requeueing the job" in text
        assert "requeued SLURM job 7" in text
        assert (stopped["work"] / "scontrol.args").read_text().split() == ["requeue", "7"]
        last = f"interrupted at step {step}; saved {saved}; the requeued job resumes from it"
    else:
        assert f"{name}: saving a checkpoint once step {step} completes" in text
        command = shlex.join([*fit_command(stopped["work"] / f"{name}.yaml"), "--ckpt_path", "last"])
        last = f"interrupted at step {step}; saved {saved}; resume with: {command}"
    assert last in text.splitlines()
    assert stopped[f"{name} saved"]["global_step"] == step
    assert "Traceback" not in text and not list(root.rglob("hpc_ckpt_*"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_a_resumed_run_logs_step_for_step_what_an_uninterrupted_run_logs(stopped, name):
    text, returncode = stopped[f"{name} resumed"]
    assert returncode == 0, text[-3000:]
    root, step = stopped["work"] / name, stopped["pauses"][name] + 1
    assert f"resuming {root}/version_0 from {root}/version_0/checkpoints/last.ckpt at step {step}" in text
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["version_0"]
    whole, resumed = (step_rows(r / "version_0/metrics.csv") for r in (stopped["work"] / "whole", root))
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == whole  # every row, training and validation, before and after the stop


def test_more_mini_batches_than_prompt_groups_per_rank_are_refused_before_the_run_has_a_folder(tiny_world, tmp_path):
    config = write_config(tmp_path / "config.yaml", tiny_world, tmp_path / "runs")
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--model.ppo_mini_batches", "2"]
    cli = main(["--config", str(config), *ddp, "--data.prompts_per_step", "2"], run=False)
    with pytest.raises(UserError, match=r"ppo_mini_batches=2 needs at least as many prompt groups per rank; this rank"):
        prepare_fit(cli.trainer, cli.model, cli.datamodule, ckpt_path=None, resume_anyway=False, args=[])
    assert not (tmp_path / "runs").exists()
