"""Every YAML under configs/ instantiates; CLI overrides reach the module; --help documents the CHORD knobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_chord.__main__ import main

CONFIGS = Path(__file__).parent.parent / "configs"
BASE = CONFIGS / "chord_qwen2.5_7b_openr1.yaml"
DEMO = CONFIGS / "demo.yaml"
# Variant files only hold the keys they change; each is layered on its base recipe.
VARIANTS = {"chord_mu.yaml": BASE, "chord_phi.yaml": BASE, "strategy_ddp.yaml": BASE} | {
    p.name: DEMO for p in CONFIGS.glob("demo_*.yaml")
}


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
    mu = instantiate("--config", str(BASE), "--config", str(CONFIGS / "chord_mu.yaml")).model.hparams
    assert (mu.mu_warmup_steps, mu.mu_decay_steps, mu.mu_peak, mu.mu_valley, mu.sft_weighting) == (
        0,
        200,
        0.9,
        0.05,
        "none",
    )
    phi = instantiate("--config", str(BASE), "--config", str(CONFIGS / "chord_phi.yaml")).model.hparams
    assert (phi.mu_warmup_steps, phi.mu_decay_steps, phi.mu_valley, phi.sft_weighting) == (0, 0, 0.1, "phi")


@pytest.mark.parametrize(
    "variant, mu_at_steps, weighting, experts_per_step",
    [
        # mu_schedule(step, warmup, decay, peak, valley) at steps 1, 300, 600; demo.yaml alone: 0.9 -> 0.05 by 300.
        ("demo.yaml", None, "none", 65),  # 65 = ceil(0.334 * 128 / 0.666)
        ("demo_sft_only.yaml", [1.0, 1.0, 1.0], "none", 65),
        ("demo_grpo_only.yaml", [0.0, 0.0, 0.0], "none", 0),
        ("demo_fixed_mix.yaml", [0.5, 0.5, 0.5], "none", 65),
        ("demo_chord_phi.yaml", [0.1, 0.1, 0.1], "phi", 65),
    ],
)
def test_demo_baselines_set_mu(variant, mu_at_steps, weighting, experts_per_step, monkeypatch):
    from lit_chord.loss import mu_schedule

    monkeypatch.chdir(CONFIGS.parent)
    layers = ["--config", str(DEMO)] + (["--config", str(CONFIGS / variant)] if variant != "demo.yaml" else [])
    cli = instantiate(*layers)
    hp = cli.model.hparams
    schedule = [mu_schedule(s, hp.mu_warmup_steps, hp.mu_decay_steps, hp.mu_peak, hp.mu_valley) for s in (1, 300, 600)]
    if mu_at_steps is None:
        assert schedule == pytest.approx([0.9, 0.05, 0.05], abs=1e-4)
    else:
        assert schedule == mu_at_steps
    assert hp.sft_weighting == weighting
    assert cli.datamodule.experts_per_step == experts_per_step


def test_val_data_accepts_named_sets(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    sets = '{"digits": "data/demo/heldout.jsonl", "seen": "data/demo/prompts.jsonl"}'
    cli = instantiate("--config", str(DEMO), "--data.val_data", sets)
    assert cli.datamodule.val_set_names == ["digits", "seen"]
    cli = instantiate("--config", str(DEMO))
    assert cli.datamodule.val_set_names == ["heldout"]


def test_cli_override_reaches_the_module(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    cli = instantiate("--config", str(CONFIGS / "demo.yaml"), "--model.mu_peak", "0.3")
    assert cli.model.hparams.mu_peak == 0.3


def test_out_of_range_mu_is_rejected_naming_the_key(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    with pytest.raises(ValueError, match="model.mu_peak"):
        instantiate("--config", str(CONFIGS / "demo.yaml"), "--model.mu_peak", "1.5")


def test_unknown_key_is_rejected(monkeypatch, capsys):
    monkeypatch.chdir(CONFIGS.parent)
    with pytest.raises(SystemExit):
        instantiate("--config", str(CONFIGS / "demo.yaml"), "--model.mu_peek", "0.3")
    assert "mu_peek" in capsys.readouterr().err


def test_help_documents_the_chord_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    for knob in (
        "--model.mu_peak",
        "--model.mu_decay_steps",
        "--model.sft_weighting",
        "--data.expert_data_ratio",
        "--data.prompts_per_step",
    ):
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
