"""The command line: a user error is one line on stderr with exit code 2, a bug keeps its traceback, and a run
prints none of the third-party noise that says nothing about it.

Each case is a real ``python -m lit_chord`` in a scratch working directory (so the demo config's relative paths do
not resolve, and nothing is written into the repository), offline. The processes start together, once per module:
each costs ~5 s of imports, and one after the other they would take most of a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from lit_chord.cli import check_datasets, command_line, config_error
from lit_chord.errors import ConfigError, UserError
from lit_chord.module import ChordModule
from lit_chord.objectives import Chord
from lit_chord.records import DataError

REPO = Path(__file__).parent.parent
CONFIGS = REPO / "configs"
DEMO = REPO / "data" / "demo"
# The demo's data and model by absolute path, for the cases that must get past the path checks.
DEMO_PATHS = [
    *("--model.model", str(DEMO / "model"), "--data.tokenizer", str(DEMO / "model")),
    *("--data.prompt_data", str(DEMO / "prompts.jsonl"), "--data.expert_data", str(DEMO / "expert.jsonl")),
    *("--data.val_data", str(DEMO / "heldout.jsonl")),
]
NOISE = {
    "Lightning's litlogger tip": "litlogger",
    "torch's _pytree deprecation": "LeafSpec",
    "wandb's anonymous setting warning": "anonymous setting",
}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def fit_args(inputs: Path) -> dict[str, list[str]]:
    """Case -> arguments after ``python -m lit_chord fit``; relative paths are in the case's working directory."""
    bad_prompts = inputs / "prompts.jsonl"
    bad_prompts.write_text('{"problem": "Reverse 12.", "answer": "21"}\n{"problem": "Reverse 34.", "answer": null}\n')
    demo = ["--config", str(CONFIGS / "demo.yaml")]
    old_style = yaml.safe_load((CONFIGS / "demo.yaml").read_text())  # the rollout callback among the callbacks
    rollout = {"class_path": "lit_chord.rollout_callback.RolloutCallback", "init_args": old_style.pop("rollout")}
    old_style["trainer"]["callbacks"].insert(0, rollout)
    (inputs / "old_style.yaml").write_text(yaml.safe_dump(old_style))
    quiet = [
        *("--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"),
        *("--trainer.default_root_dir", ".", "--trainer.logger", "lightning.pytorch.loggers.WandbLogger"),
        *("--trainer.logger.save_dir", ".", "--trainer.logger.offline", "true"),
    ]
    cases = {
        "bad_data": [*demo, *DEMO_PATHS, "--data.prompt_data", str(bad_prompts)],
        "bad_value": [*demo, "--model.objective.mu_peak", "2"],
        "missing_path": demo,
        "hub_offline": [*demo, *DEMO_PATHS, "--model.model", "org/not-cached", "--data.tokenizer", "org/not-cached"],
        "debug": [*demo, "--model.objective.mu_peak", "2"],
        "quiet_run": [*demo, *DEMO_PATHS, *quiet],
        "old_style": ["--config", str(inputs / "old_style.yaml")],
        "typo_flag": [*demo, "--model.objective.mu_peek", "0.5"],
        "moved_flag": [*demo, "--model.mu_peak", "0.5"],
        "help": ["--help"],
    }
    if not torch.cuda.is_available():  # with a GPU this config would start a real run
        cases["gpu_config"] = ["--config", str(CONFIGS / "chord_qwen2.5_1.5b_1gpu.yaml")]
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Result]:
    """Every case's exit code, output and wall time; the processes run in parallel."""
    started = {}
    for case, args in fit_args(tmp_path_factory.mktemp("inputs")).items():
        work = tmp_path_factory.mktemp(case)  # the working directory, and where a run's files go
        env = {k: v for k, v in os.environ.items() if k != "LIT_CHORD_DEBUG"}
        env |= {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HF_HUB_CACHE": str(work / "hf_cache")}
        if case == "debug":
            env["LIT_CHORD_DEBUG"] = "1"
        command = [sys.executable, "-m", "lit_chord", "fit", *args]
        with open(work / "stdout", "w") as out, open(work / "stderr", "w") as err:  # files: a full pipe would block
            process = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=err)
        started[case] = (process, work, time.monotonic())
    done: dict[str, Result] = {}
    deadline = time.monotonic() + 300
    while len(done) < len(started) and time.monotonic() < deadline:  # polled, so each case gets its own wall time
        for case, (process, work, start) in started.items():
            if case not in done and process.poll() is not None:
                out, err = (work / "stdout").read_text(), (work / "stderr").read_text()
                done[case] = Result(process.returncode, out, err, time.monotonic() - start)
        time.sleep(0.05)
    for process, _, _ in started.values():
        process.kill()  # a case still running at the deadline; its test fails on the missing result
    return done


def one_line_error(result: Result) -> str:
    """The error line, asserting that the run ended in it (and a hint), with exit code 2 and no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    last = max(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert all(line.startswith("hint: ") for line in lines[last + 1 :]), lines
    print(f"{result.seconds:.1f} s: {lines[last]}")
    return lines[last]


def test_bad_data_is_one_line_naming_file_line_and_field(results):
    line = one_line_error(results["bad_data"])
    assert "prompts.jsonl:2: field 'answer' is null" in line


def test_bad_config_value_is_one_line_naming_the_key(results):
    assert "model.objective.mu_peak must lie in [0, 1], got 2.0" in one_line_error(results["bad_value"])


def test_missing_local_path_names_it_and_the_working_directory(results):
    line = one_line_error(results["missing_path"])
    assert "model.model: 'data/demo/model' not found" in line
    assert "relative paths are resolved from the working directory" in line
    assert "missing_path" in line  # the name of the scratch working directory
    assert "data.prompt_data" in line  # the other missing paths are listed too


def test_hub_name_that_is_not_cached_fails_fast_when_offline(results):
    line = one_line_error(results["hub_offline"])
    assert "'org/not-cached' is not a local folder" in line
    assert "not in the Hugging Face cache" in line and "offline" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU config runs on a machine with a GPU")
def test_gpu_config_without_a_gpu_says_what_to_use_instead(results):
    result = results["gpu_config"]
    assert "this config asks for accelerator gpu" in one_line_error(result)
    assert "hint: on this machine use `--trainer.accelerator cpu` or `configs/demo.yaml`" in result.stderr


def test_a_config_with_the_rollout_callback_among_the_callbacks_is_one_line_naming_the_file(results):
    line = one_line_error(results["old_style"])
    assert line.startswith("error: ") and "old_style.yaml: trainer.callbacks lists RolloutCallback" in line
    assert "hint: move its init_args under `rollout:` (YAML)" in results["old_style"].stderr


def test_a_typo_in_a_flag_is_one_line_with_the_nearest_valid_key(results):
    line = one_line_error(results["typo_flag"])
    expected = (
        "model.objective.mu_peek (in the command line) is not an option of Chord; did you mean model.objective.mu_peak?"
    )
    assert line == f"error: {expected}"
    assert "tip: For details of accepted options run: python -m lit_chord fit --help" in results["typo_flag"].stderr


def test_a_flag_from_before_objectives_names_its_new_place(results):
    line = one_line_error(results["moved_flag"])
    moved = "model.mu_peak (in the command line) moved to model.objective.init_args.mu_peak (lit_chord.objectives)"
    assert line == f"error: {moved}"


def test_help_calls_the_program_as_it_was_started(results):
    assert results["help"].returncode == 0
    assert results["help"].stdout.startswith("usage: python -m lit_chord [options] fit ")


def test_debug_variable_shows_the_traceback_of_a_user_error(results):
    result = results["debug"]
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "lit_chord.errors.ConfigError: model.objective.mu_peak must lie in [0, 1]" in result.stderr


def test_a_run_prints_none_of_the_noise(results):
    result = results["quiet_run"]
    assert result.returncode == 0, result.stderr
    assert "`max_steps=2` reached" in result.stderr  # it did run
    for noise, text in NOISE.items():
        assert text not in result.stdout + result.stderr, noise


@pytest.mark.slow  # a CLI process of its own; the check itself runs in-process in the next test
def test_a_datasets_hub_name_that_cannot_be_had_fails_fast_naming_the_field(tmp_path):
    """A made-up hub data set as ``data.prompt_data``, offline and in no cache: one line naming the field, before the
    model loads (it was ``datasets``' ConnectionError traceback, and online after half a minute of retries)."""
    env = {k: v for k, v in os.environ.items() if k != "LIT_CHORD_DEBUG"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    args = ["--config", str(CONFIGS / "demo.yaml"), *DEMO_PATHS, "--data.prompt_data", "someone/nonexistent-dataset"]
    start = time.monotonic()
    command = [sys.executable, "-m", "lit_chord", "fit", *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    line = one_line_error(Result(done.returncode, done.stdout, done.stderr, time.monotonic() - start))
    assert "data.prompt_data: 'someone/nonexistent-dataset' is not a local file or folder" in line
    assert "not in the Hugging Face cache, and offline mode is on" in line


def test_each_data_source_that_is_no_file_is_checked_under_its_field(monkeypatch, tmp_path):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import: the variable would come too late
    monkeypatch.chdir(tmp_path)
    (tmp_path / "saved").mkdir()  # a folder ``datasets`` loads as it is
    check_datasets({"data.prompt_data": "saved"})
    with pytest.raises(ConfigError, match=r"^data.val_data.aime: 'someone/nonexistent-dataset' is not a local file"):
        check_datasets({"data.prompt_data": "saved", "data.val_data.aime": "someone/nonexistent-dataset:test"})
    with pytest.raises(ConfigError, match=r"^data.expert_data: 'data/demo/expert' not found .* and not a datasets hub"):
        check_datasets({"data.expert_data": "data/demo/expert"})  # three parts: no hub name


def test_the_papers_missing_data_points_to_the_command_that_prepares_it(monkeypatch, tmp_path):
    from lit_chord.cli import check_paths

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^data.prompt_data: 'data/openr1/rl_train.jsonl' not found") as caught:
        check_paths({}, {"data.prompt_data": "data/openr1/rl_train.jsonl"})
    assert "python -m lit_chord.data openr1 --out data/openr1" in str(caught.value.hint)
    with pytest.raises(ConfigError) as caught:
        check_paths({}, {"data.prompt_data": "mine/prompts.jsonl"})
    assert caught.value.hint is not None and caught.value.hint.startswith("run from the folder")


def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(capsys):
    def bug():
        raise RuntimeError("an index is off by one")

    with pytest.raises(RuntimeError, match="off by one"):
        command_line(bug)

    def user_error():
        raise UserError("model.x: wrong", hint="pass a right one")

    assert command_line(user_error) == 2
    assert capsys.readouterr().err == "error: model.x: wrong\nhint: pass a right one\n"
    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)


def test_only_our_and_lightnings_value_errors_count_as_config_errors():
    with pytest.raises(ValueError) as ours:
        ChordModule(model="m", objective=Chord(mu_peak=2.0))
    assert isinstance(config_error(ours.value, accelerator="cpu"), ConfigError)
    with pytest.raises(ValueError) as elsewhere:
        int("not a number")  # raised outside lit_chord and Lightning: a bug, not a value from the config
    assert config_error(elsewhere.value, accelerator="cpu") is None
