"""Every YAML under configs/ instantiates; CLI overrides reach the module; --help documents the CHORD knobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_chord.__main__ import main
from lit_chord.objectives import Chord, Grpo, Luffy, Sft

CONFIGS = Path(__file__).parent.parent / "configs"
BASE = CONFIGS / "chord_qwen2.5_7b_openr1.yaml"
DEMO = CONFIGS / "demo.yaml"
# Variant files only hold the keys they change; each is layered on its base recipe.
VARIANTS = (
    {"chord_mu.yaml": BASE, "chord_phi.yaml": BASE, "strategy_ddp.yaml": BASE, "engine_vllm.yaml": DEMO}
    | {p.name: DEMO for p in CONFIGS.glob("demo_*.yaml")}
    | {"mini_sft.yaml": CONFIGS / "mini.yaml"}
)


def instantiate(*args: str):
    """Parse and build everything without running; CPU, no logger, so GPU recipes instantiate here too."""
    configs = [a for i, a in enumerate(args) if a == "--config" or (i and args[i - 1] == "--config")]
    overrides = [a for a in args if a not in configs]
    cpu = [
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.logger",
        "false",
        "--trainer.precision",
        "32-true",
    ]
    return main([*configs, *cpu, *overrides], run=False)


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.yaml")), ids=str)
def test_every_config_instantiates(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    configs = (
        ["--config", str(VARIANTS[path]), "--config", str(CONFIGS / path)]
        if path in VARIANTS
        else ["--config", str(CONFIGS / path)]
    )
    cli = instantiate(*configs)
    assert cli.model.__class__.__name__ == "ChordModule"
    assert cli.datamodule.__class__.__name__ == "ChordDataModule"


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in VARIANTS), ids=str)
def test_every_recipe_measures_before_on_the_whole_held_out_set(path, monkeypatch):
    """The "before" accuracy is the sanity check's: Lightning's default of 2 batches would score a sliver."""
    monkeypatch.chdir(CONFIGS.parent)
    assert instantiate("--config", str(CONFIGS / path)).trainer.num_sanity_val_steps == float("inf")


def test_paper_variants_set_the_papers_values(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    mu = instantiate("--config", str(BASE), "--config", str(CONFIGS / "chord_mu.yaml")).model.objective
    assert (mu.mu_warmup_steps, mu.mu_decay_steps, mu.mu_peak, mu.mu_valley, mu.token_weighting) == (
        0,
        200,
        0.9,
        0.05,
        "none",
    )
    phi = instantiate("--config", str(BASE), "--config", str(CONFIGS / "chord_phi.yaml")).model.objective
    assert (phi.mu_warmup_steps, phi.mu_decay_steps, phi.mu_valley, phi.token_weighting) == (0, 0, 0.1, "phi")


@pytest.mark.parametrize(
    "variant, objective, mu_at_steps, weighting",
    [
        # μ at steps 1, 300, 600; demo.yaml alone: 0.9 -> 0.05 by 300.
        ("demo.yaml", Chord, None, "none"),
        ("demo_sft_only.yaml", Sft, None, "none"),
        ("demo_grpo_only.yaml", Grpo, None, None),
        ("demo_luffy.yaml", Luffy, None, None),
        ("demo_fixed_mix.yaml", Chord, [0.5, 0.5, 0.5], "none"),
        ("demo_chord_phi.yaml", Chord, [0.1, 0.1, 0.1], "phi"),
    ],
)
def test_demo_baselines_choose_their_objective(variant, objective, mu_at_steps, weighting, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    layers = ["--config", str(DEMO)] + (["--config", str(CONFIGS / variant)] if variant != "demo.yaml" else [])
    chosen = instantiate(*layers).model.objective
    assert type(chosen) is objective
    if objective is Chord:
        schedule = [chosen.mu(s) for s in (1, 300, 600)]
        assert schedule == (mu_at_steps or pytest.approx([0.9, 0.05, 0.05], abs=1e-4))
    assert getattr(chosen, "token_weighting", None) == weighting


def test_val_data_accepts_named_sets(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    sets = '{"digits": "data/demo/heldout.jsonl", "seen": "data/demo/prompts.jsonl"}'
    cli = instantiate("--config", str(DEMO), "--data.val_data", sets)
    assert cli.datamodule.val_set_names == ["digits", "seen"]
    cli = instantiate("--config", str(DEMO))
    assert cli.datamodule.val_set_names == ["heldout"]


def test_cli_override_reaches_the_module(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    cli = instantiate("--config", str(CONFIGS / "demo.yaml"), "--model.objective.mu_peak", "0.3")
    assert cli.model.objective.mu_peak == 0.3


def test_out_of_range_mu_is_rejected_naming_the_key(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    with pytest.raises(ValueError, match="model.objective.mu_peak"):
        instantiate("--config", str(CONFIGS / "demo.yaml"), "--model.objective.mu_peak", "1.5")


def test_unknown_key_is_rejected_with_the_nearest_valid_one(monkeypatch, capsys):
    monkeypatch.chdir(CONFIGS.parent)
    with pytest.raises(SystemExit):
        instantiate("--config", str(CONFIGS / "demo.yaml"), "--model.objective.mu_peek", "0.3")
    error = capsys.readouterr().err.strip().splitlines()[-1]
    expected = (
        "model.objective.mu_peek (in the command line) is not an option of Chord; did you mean model.objective.mu_peak?"
    )
    assert error == f"error: {expected}"


def test_unknown_key_in_a_config_file_names_the_file_and_the_nearest_key(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(CONFIGS.parent)
    (tmp_path / "typo.yaml").write_text("rollout:\n  max_new_tokenz: 8\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(DEMO), "--config", str(tmp_path / "typo.yaml")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    expected = (
        f"rollout.max_new_tokenz (in {tmp_path / 'typo.yaml'}) is not an option; did you mean rollout.max_new_tokens?"
    )
    assert error == f"error: {expected}"


def test_help_names_the_program_and_only_the_subcommands_that_work(monkeypatch, capsys):
    """``test`` and ``predict`` need a ``test_step``/``predict_step`` the module does not have: not offered."""
    import lit_chord.__main__

    monkeypatch.setattr("sys.argv", [lit_chord.__main__.__file__])  # as ``python -m lit_chord`` starts
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m lit_chord [-c CONFIG] {fit,validate} ...")
    with pytest.raises(SystemExit) as refused:
        main(["test", "--config", str(DEMO)])
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip().endswith("invalid choice: 'test' (choose from 'fit', 'validate')")


def test_help_documents_the_chord_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    for knob in (
        "--model.objective OBJECTIVE",
        "--data.expert_data_ratio",
        "--data.prompts_per_step",
    ):
        assert knob in text
    with pytest.raises(SystemExit):
        main(["fit", "--model.objective.help", "lit_chord.objectives.chord.Chord"])
    text = capsys.readouterr().out
    for knob in ("--model.objective.mu_peak", "--model.objective.token_weighting", "--model.objective.clip_low"):
        assert knob in text
    assert "Largest weight of the SFT term" in text


@pytest.mark.parametrize("path", ["chord_qwen2.5_7b_openr1.yaml", "chord_qwen2.5_1.5b_1gpu.yaml"])
def test_paper_recipes_use_the_papers_reward(path, monkeypatch):
    from lit_chord.rewards import paper_math
    from lit_chord.rollout_callback import RolloutCallback

    monkeypatch.chdir(CONFIGS.parent)
    callbacks = instantiate("--config", str(CONFIGS / path)).trainer.callbacks
    (rollout,) = [c for c in callbacks if isinstance(c, RolloutCallback)]
    assert rollout.reward_fn is paper_math and rollout.reward_takes_truncated


# ----- the rollout group: the engine and the sampling settings from the command line or an overlay --------------------
def rollout_of(cli):
    """The run's one rollout callback; it comes first among the callbacks, where the configs used to list it."""
    from lit_chord.rollout_callback import RolloutCallback

    rollouts = [c for c in cli.trainer.callbacks if isinstance(c, RolloutCallback)]
    assert len(rollouts) == 1 and cli.trainer.callbacks[0] is rollouts[0]
    return rollouts[0]


def callback_names(cli) -> list[str]:
    return [type(c).__name__ for c in cli.trainer.callbacks]


def test_one_flag_switches_the_engine_and_another_sets_its_arguments(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    vllm = "lit_chord.engines.vllm_engine.VLLMEngine"
    cli = instantiate("--config", str(DEMO), "--rollout.engine", vllm, "--rollout.engine.dtype", "float32")
    rollout = rollout_of(cli)
    assert type(rollout.engine).__name__ == "VLLMEngine" and rollout.engine.dtype == "float32"
    assert (rollout.sampling.max_new_tokens, rollout.scale_advantages_by_std) == (16, False)  # the demo's
    assert type(rollout_of(instantiate("--config", str(DEMO))).engine).__name__ == "TransformersEngine"


@pytest.mark.parametrize("base", ["demo.yaml", "mini.yaml"])
def test_the_vllm_overlay_changes_the_engine_alone(base, monkeypatch):
    """Layered on a config, ``configs/engine_vllm.yaml`` keeps its callbacks and its rollout settings."""
    monkeypatch.chdir(CONFIGS.parent)
    alone = instantiate("--config", str(CONFIGS / base))
    layered = instantiate("--config", str(CONFIGS / base), "--config", str(CONFIGS / "engine_vllm.yaml"))
    assert callback_names(layered) == callback_names(alone)
    # demo: RolloutCallback, RunSummary, PolicyExport, SampleTable, StepProgressBar, ..., ModelCheckpoint
    assert {"RunSummary", "PolicyExport", "SampleTable", "StepProgressBar", "ModelCheckpoint"} <= set(
        callback_names(layered)
    )
    before, after = rollout_of(alone), rollout_of(layered)
    assert type(after.engine).__name__ == "VLLMEngine" and after.engine.dtype == "float32"
    assert after.sampling == before.sampling
    assert (after.reward_fn, after.scale_advantages_by_std, after.val_num_samples) == (
        before.reward_fn,
        before.scale_advantages_by_std,
        before.val_num_samples,
    )
    if base == "demo.yaml":
        assert (after.sampling.max_new_tokens, after.scale_advantages_by_std) == (16, False)


def test_the_overlay_keeps_a_vllm_recipes_engine_settings(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    recipe = str(CONFIGS / "chord_qwen2.5_1.5b_1gpu.yaml")
    engine = rollout_of(instantiate("--config", recipe, "--config", str(CONFIGS / "engine_vllm.yaml"))).engine
    assert (engine.dtype, engine.gpu_memory_utilization, engine.max_model_len) == ("float32", 0.3, 5120)


def test_a_config_listing_the_rollout_callback_among_the_callbacks_is_refused_naming_the_file(monkeypatch, tmp_path):
    """The configs before the ``rollout`` group listed it under ``trainer.callbacks``: one clear error, not two
    rollout callbacks (Lightning's traceback about two stateful callbacks of one type)."""
    import yaml

    from lit_chord.errors import ConfigError

    monkeypatch.chdir(CONFIGS.parent)
    old = yaml.safe_load(DEMO.read_text())
    rollout = {"class_path": "lit_chord.rollout_callback.RolloutCallback", "init_args": old.pop("rollout")}
    old["trainer"]["callbacks"].insert(0, rollout)
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"old\.yaml: trainer\.callbacks lists RolloutCallback.*`rollout:`"):
        instantiate("--config", str(tmp_path / "old.yaml"))
