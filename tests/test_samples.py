"""SampleTable: a JSONL file per validation without wandb, a wandb Table with a WandbLogger."""

from __future__ import annotations

import json
from types import SimpleNamespace
from unittest import mock

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from lit_chord.batch import Prompt, ValBatch, ValResult
from lit_chord.samples import COLUMNS, SampleTable


def answered_batch(count: int, offset: int = 0) -> ValBatch:
    prompts = [Prompt([1, 2], answer=f"{i}"[::-1], text=f"Reverse {i}.") for i in range(offset, offset + count)]
    results = [
        ValResult(
            greedy_correct=float(i % 2 == 0),
            greedy_length=5,
            sample_correct=[1.0, 0.0, 0.0],
            completion=f"\\boxed{{{i}}}",
            greedy_reward=1.0 if i % 2 == 0 else -0.1,
            pass_at_k=1 / 3,
        )
        for i in range(offset, offset + count)
    ]
    return ValBatch(prompts, results)


def fake_trainer(tmp_path, loggers, step=7, names=("heldout", "extra"), fn=TrainerFn.FITTING, checkpoint_step=None):
    return SimpleNamespace(
        is_global_zero=True,
        global_step=step,
        state=SimpleNamespace(fn=fn),
        ckpt_path=None if checkpoint_step is None else "last.ckpt",
        lightning_module=SimpleNamespace(checkpoint_step=checkpoint_step),
        loggers=loggers,
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path),
        datamodule=SimpleNamespace(val_set_names=list(names)),
    )


def run_validation(callback, trainer):
    """Set "heldout" in two batches of 2 (3 rows kept of 4), set "extra" in one batch of 2."""
    callback.on_validation_epoch_start(trainer, None)
    callback.on_validation_batch_end(trainer, None, None, answered_batch(2), 0, 0)
    callback.on_validation_batch_end(trainer, None, None, answered_batch(2, offset=2), 1, 0)
    callback.on_validation_batch_end(trainer, None, None, answered_batch(2, offset=10), 0, 1)
    callback.on_validation_epoch_end(trainer, None)


def test_without_wandb_rows_go_to_a_jsonl_file(tmp_path):
    callback = SampleTable(num_prompts=3)
    run_validation(callback, fake_trainer(tmp_path, [CSVLogger(tmp_path)]))
    assert callback.path == tmp_path / "samples" / "step_7.jsonl"
    rows = [json.loads(line) for line in callback.path.read_text().splitlines()]
    assert [(r["set"], r["prompt"]) for r in rows] == [
        ("heldout", "Reverse 0."),
        ("heldout", "Reverse 1."),
        ("heldout", "Reverse 2."),  # the first 3 of the set, across its batches
        ("extra", "Reverse 10."),
        ("extra", "Reverse 11."),
    ]
    assert rows[1] == {
        "step": 7,
        "set": "heldout",
        "prompt": "Reverse 1.",
        "answer": "1",
        "completion": "\\boxed{1}",
        "reward": -0.1,
        "samples_correct": "1/3",
        "pass@k": pytest.approx(1 / 3),
    }


def test_a_new_validation_starts_a_new_table(tmp_path):
    callback = SampleTable(num_prompts=1)
    run_validation(callback, fake_trainer(tmp_path, [], step=1))
    run_validation(callback, fake_trainer(tmp_path, [], step=2))
    assert len((tmp_path / "samples" / "step_2.jsonl").read_text().splitlines()) == 2  # one row per set


def test_validating_a_checkpoint_files_its_rows_under_the_checkpoints_step(tmp_path):
    """``validate --ckpt_path``: Lightning restores no loop, so ``global_step`` reads 0; the weights are step 30's."""
    trainer = fake_trainer(tmp_path, [], step=0, fn=TrainerFn.VALIDATING, checkpoint_step=30)
    run_validation(SampleTable(num_prompts=1), trainer)
    path = tmp_path / "samples" / "step_30.jsonl"
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [30, 30]
    assert not (tmp_path / "samples" / "step_0.jsonl").exists()


def test_with_wandb_rows_go_to_a_table(tmp_path):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    with mock.patch.object(WandbLogger, "log_table") as log_table:
        run_validation(SampleTable(num_prompts=2), fake_trainer(tmp_path, [CSVLogger(tmp_path), logger]))
    (call,) = log_table.call_args_list
    assert call.kwargs["key"] == "val/samples" and call.kwargs["step"] == 7
    assert call.kwargs["columns"] == COLUMNS
    assert [row[COLUMNS.index("prompt")] for row in call.kwargs["data"]] == [
        "Reverse 0.",
        "Reverse 1.",
        "Reverse 10.",
        "Reverse 11.",
    ]
    assert not (tmp_path / "samples").exists()


def test_num_prompts_must_be_positive():
    with pytest.raises(ValueError, match="num_prompts"):
        SampleTable(num_prompts=0)
