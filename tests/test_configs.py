"""Every YAML under configs/ instantiates; CLI overrides reach the module; --help documents the CHORD knobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_chord.__main__ import main

CONFIGS = Path(__file__).parent.parent / "configs"
BASE = CONFIGS / "chord_qwen2.5_7b_openr1.yaml"
# Variant files only hold the keys they change; they are layered on the base recipe.
VARIANTS = {"chord_mu.yaml", "chord_phi.yaml"}


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
        ["--config", str(BASE), "--config", str(CONFIGS / path)]
        if path in VARIANTS
        else ["--config", str(CONFIGS / path)]
    )
    cli = instantiate(*configs)
    assert cli.model.__class__.__name__ == "ChordModule"
    assert cli.datamodule.__class__.__name__ == "ChordDataModule"


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
