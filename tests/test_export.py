"""What ``PolicyExport`` reports and records: the best policy beside the one before training, and an adapter whose
base path is absolute."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import EchoEngine, cpu_trainer, tiny_datamodule

from lit_chord.export import PolicyExport
from lit_chord.lora import LoraSettings
from lit_chord.module import ChordModule
from lit_chord.rollout_callback import RolloutCallback

METRIC = "val/heldout/avg@4"


def validation(export: PolicyExport, step: int, value: float, sanity: bool) -> None:
    metrics = {METRIC: torch.tensor(value)}
    trainer = SimpleNamespace(sanity_checking=sanity, global_step=step, callback_metrics=metrics, is_global_zero=False)
    export.on_validation_end(trainer, None)  # type: ignore[arg-type]


def test_the_report_says_the_policy_before_training_was_better_than_the_best_and_not_a_candidate(tmp_path, capsys):
    export = PolicyExport(best_by=METRIC)
    export.save = lambda trainer, module, path: None  # type: ignore[method-assign]  # no policy to write here
    export.run_dir = lambda trainer: tmp_path  # type: ignore[method-assign]
    validation(export, 0, 0.101, sanity=True)  # before training
    validation(export, 30, 0.029, sanity=False)
    validation(export, 60, 0.020, sanity=False)
    assert export.best is not None and export.best["step"] == 30 and export.best["value"] == pytest.approx(0.029)
    assert export.before == pytest.approx(0.101)
    trainer = SimpleNamespace(callback_metrics={}, checkpoint_callback=None, is_global_zero=True)
    module = SimpleNamespace(lora=None, held_out=SimpleNamespace(before=None))
    export.path = tmp_path / "export"
    PolicyExport.report.__wrapped__(export, trainer, module, tmp_path)  # rank_zero_only's function itself
    out = capsys.readouterr().out
    assert f"({METRIC} 0.029 at step 30)" in out
    assert "(before training it was 0.101 at step 0: the best is chosen among the trained policies only)" in out
    # A resumed run's sanity check validates trained weights: it does not replace the value before training.
    validation(export, 60, 0.5, sanity=True)
    assert export.before == pytest.approx(0.101) and PolicyExport().state_dict() == {"best": None, "before": None}


def test_a_lora_adapter_of_a_base_given_by_a_relative_path_records_it_absolute(tiny_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_world)
    module = ChordModule(model="model", lora=LoraSettings(rank=2), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    export = PolicyExport()
    rollout = RolloutCallback(engine=EchoEngine(), reward_fn=lambda completion, answer: float(len(completion) % 2))
    trainer = cpu_trainer(max_steps=1, default_root_dir=tmp_path, callbacks=[rollout, export])
    trainer.fit(module, tiny_datamodule(tiny_world))
    config = json.loads((export.path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_world / "model")  # tiny_world is absolute already
