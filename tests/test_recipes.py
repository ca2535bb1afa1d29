"""The paper's recipes from raw data to a validation, on CPU: every config prints a config that loads again, and
each recipe's data path (prepare -> train -> validate on every prepared set) runs on the fixtures with the tiny model.

Only the GPU parts are swapped out: the trainer runs on one CPU process in float32 and the transformers engine
generates. Everything else comes from the recipe file: the reward, the per-set evaluation protocol, the data
fields (ToolACE prompts bring their own system turn), the token budget.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from test_configs import CONFIGS, VARIANTS, instantiate

from lit_chord.__main__ import main
from lit_chord.data.benchmarks import prepare_benchmark
from lit_chord.data.openr1 import prepare_openr1
from lit_chord.data.toolace import prepare_toolace
from lit_chord.engines import SamplingConfig
from lit_chord.engines.transformers_engine import TransformersEngine
from lit_chord.rollout_callback import RolloutCallback

PREP = Path(__file__).parent / "data" / "prep"
BENCHMARKS = ("aime24", "aime25", "amc", "math500", "mmlu_pro")


def config_args(name: str) -> list[str]:
    base = ["--config", str(VARIANTS[name])] if name in VARIANTS else []
    return [*base, "--config", str(CONFIGS / name)]


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")), ids=str)
def test_print_config_prints_a_config_that_loads_again(name, monkeypatch, capsys, tmp_path):
    """``fit --print_config`` exits 0 with the whole resolved config, and that output is itself a valid config."""
    monkeypatch.chdir(CONFIGS.parent)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *config_args(name), "--print_config"])
    assert stopped.value.code in (0, None)
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert {"trainer", "model", "data"} <= set(config)
    for fit_only in ("ckpt_path", "weights_only", "resume_anyway"):  # the fit subcommand's own arguments
        config.pop(fit_only)
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(config))
    original, again = instantiate(*config_args(name)), instantiate("--config", str(tmp_path / "printed.yaml"))
    assert dict(again.model.hparams) == dict(original.model.hparams)
    assert dict(again.datamodule.hparams) == dict(original.datamodule.hparams)


def prepare_math(out: Path, tokenizer: str) -> dict[str, str]:
    """OpenR1 and the five benchmarks from their fixtures, as the README's preparation commands write them."""
    from transformers import AutoTokenizer

    prepare_openr1(
        out / "openr1",
        AutoTokenizer.from_pretrained(tokenizer),
        source=str(PREP / "openr1_math.jsonl"),
        max_tokens=64,
        sft_size=5,
        rl_size=4,
    )
    for name in BENCHMARKS:
        prepare_benchmark(name, out / "eval", source=str(PREP / f"{name}.jsonl"))
    sets = {name: str(out / "eval" / f"{name}.jsonl") for name in BENCHMARKS}
    return {
        "prompt_data": str(out / "openr1" / "rl_train.jsonl"),
        "expert_data": str(out / "openr1" / "sft.jsonl"),
        "val_data": json.dumps(sets),
    }


def prepare_tools(out: Path, tokenizer: str) -> dict[str, str]:
    prepare_toolace(out / "toolace", str(PREP / "toolace_rl.jsonl"), str(PREP / "toolace_sft.jsonl"), heldout=3)
    return {
        "prompt_data": str(out / "toolace" / "rl_train.jsonl"),
        "expert_data": str(out / "toolace" / "sft.jsonl"),
        "val_data": json.dumps({"toolace": str(out / "toolace" / "heldout.jsonl")}),
    }


RECIPES = {
    # recipe: (prepare, {set: rows in its prepared file (test_data_prep counts them by hand)}, {set: n samples})
    "chord_qwen2.5_7b_openr1.yaml": (
        prepare_math,
        {"aime24": 5, "aime25": 4, "amc": 5, "math500": 5, "mmlu_pro": 6},
        {"aime24": 32, "aime25": 32, "amc": 8},
    ),
    "chord_qwen2.5_1.5b_1gpu.yaml": (
        prepare_math,
        {"aime24": 5, "aime25": 4, "amc": 5, "math500": 5, "mmlu_pro": 6},
        {"aime24": 32, "aime25": 32, "amc": 8},
    ),
    "chord_llama3.2_3b_toolace.yaml": (prepare_tools, {"toolace": 3}, {}),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES), ids=str)
def test_a_recipe_runs_from_raw_fixture_files_to_a_validation_on_each_set(recipe, tiny_world, tmp_path, monkeypatch):
    """Prepare the recipe's data from the raw fixtures, train one step on it and validate on every prepared set
    with the recipe's own reward and protocol: each set is scored whole (count = its rows) under its avg@n name."""
    prepare, sizes, samples = RECIPES[recipe]
    model = str(tiny_world / "model")
    paths = prepare(tmp_path / "data", model)
    monkeypatch.chdir(CONFIGS.parent)
    cli = instantiate(
        "--config", str(CONFIGS / recipe),
        "--model.model", model, "--model.gradient_checkpointing", "false",
        "--data.tokenizer", model, "--data.prompts_per_step", "2", "--data.num_generations", "2",
        "--data.experts_per_step", "2", "--data.max_prompt_length", "2048",
        *[arg for key, value in paths.items() for arg in (f"--data.{key}", value)],
        "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "logs"),
    )  # fmt: skip
    (rollouts,) = [c for c in cli.trainer.callbacks if isinstance(c, RolloutCallback)]
    rollouts.engine = TransformersEngine()  # the recipe's vLLM engine needs a GPU
    rollouts.sampling = SamplingConfig(temperature=1.0, max_new_tokens=8)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    with open(Path(cli.trainer.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/accuracy")]
    assert [float(row["step"]) for row in rows] == [0.0, 1.0]  # before training and after the step
    for row in rows:
        for name, size in sizes.items():
            assert float(row[f"val/{name}/count"]) == size, name
            assert 0.0 <= float(row[f"val/{name}/greedy_acc"]) <= 1.0
            logged = [key for key, value in row.items() if key.startswith(f"val/{name}/avg@") and value != ""]
            assert logged == ([f"val/{name}/avg@{samples[name]}"] if name in samples else []), name  # greedy only
