"""Exact resume: a run stopped after step k and resumed from its checkpoint logs, step for step, what an
uninterrupted run logs. Bit-identical on CPU (the kernels are deterministic there), so the comparisons use ==.

What has to come back for that: the weights, AdamW's moments, the LR scheduler, μ (from ``global_step``), both
data streams (a pure function of the step), the generation seeds and the training step's RNG (both from (seed,
step, rank); Lightning checkpoints no RNG state), the skipped-step counter, and the engine must receive the
restored weights before the first rollout.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import EchoEngine, NanGradient, cpu_trainer, tiny_datamodule
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_chord.datamodule import ChordDataModule
from lit_chord.engines.transformers_engine import TransformersEngine
from lit_chord.lora import LoraSettings
from lit_chord.module import ChordModule
from lit_chord.objectives import Chord
from lit_chord.rollout_callback import RolloutCallback
from lit_chord.runs import hparams_differences

REPO = Path(__file__).parent.parent
TIMING = (
    "rollout/gen_seconds",
    "rollout/sync_seconds",
    "train/update_seconds",
    "train/tokens_per_second",
    "train/mfu",
)


def digit_share(completion: str, answer: str) -> float:
    """A reward that varies with the sampled tokens (the tiny model never earns the task's reward), so the logged
    rewards, and the advantages, reflect the exact samples."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


class SpyEngine(TransformersEngine):
    """Records the seed of every generation and the weights of every ``load_weights``."""

    def __init__(self) -> None:
        super().__init__()
        self.seeds: list[int] = []
        self.loads: list[torch.Tensor] = []

    def generate(self, prompt_ids, n, sampling):
        self.seeds.append(sampling.seed)
        return super().generate(prompt_ids, n, sampling)

    def load_weights(self, named_tensors) -> None:
        self.loads.append(torch.cat([t.detach().flatten() for _, t in named_tensors]).clone())


class Recorder(Callback):
    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}
        self.rollouts: dict[int, list[list[int]]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k not in TIMING}
        self.logged[trainer.global_step] = metrics
        self.rollouts[trainer.global_step] = [s.response_ids for s in batch.rollouts]


class StallAt(Callback):
    """For the subprocess test: at the start of (0-based) step ``step``, after the checkpoint of the step before
    was written, write ``marker`` and wait to be killed."""

    def __init__(self, step: int | None = None, marker: str = "") -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(300)


@pytest.fixture(scope="module")
def dropout_model(tiny_world, tmp_path_factory) -> Path:
    """The tiny model with attention dropout, so the training step draws from the global RNG."""
    model = tmp_path_factory.mktemp("dropout") / "model"
    shutil.copytree(tiny_world / "model", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    return model


def fit(
    world: Path,
    model: Path,
    root: Path,
    max_steps: int,
    global_seed: int,
    ckpt_path: str | None = None,
    lora: LoraSettings | None = None,
    ppo_epochs: int = 1,
):
    torch.manual_seed(global_seed)  # a resumed process starts from another global RNG state: nothing may depend on it
    module = ChordModule(
        model=str(model),
        lora=lora,
        ppo_epochs=ppo_epochs,
        ppo_mini_batches=ppo_epochs,  # 1 update, or 2 epochs of 2 mini-batches
        micro_batch_size=4,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7),
        objective=Chord(mu_warmup_steps=2, mu_decay_steps=2, mu_peak=0.8, mu_valley=0.2),
    )
    engine, recorder = SpyEngine(), Recorder()
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=2, save_top_k=-1)
    trainer = cpu_trainer(
        enable_checkpointing=True,
        max_steps=max_steps,
        callbacks=[
            RolloutCallback(engine=engine, reward_fn=digit_share, max_new_tokens=8),
            recorder,
            NanGradient({2}),  # the checkpoint then holds a skipped step
            checkpoint,
        ],
    )
    datamodule = tiny_datamodule(world)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, engine, recorder


LORAS = [None, LoraSettings(rank=4, dropout=0.1), LoraSettings(rank=4, dropout=0.1, modules_to_save=["embed_tokens"])]
RUNS = [(lora, 1) for lora in LORAS] + [(None, 2)]  # (LoRA, PPO epochs = mini-batches)


@pytest.mark.parametrize(("lora", "epochs"), RUNS, ids=["full", "lora", "lora+embeddings", "full+4-updates"])
def test_fit_resumed_from_a_checkpoint_equals_an_uninterrupted_fit(tiny_world, dropout_model, tmp_path, lora, epochs):
    kwargs = {"lora": lora, "ppo_epochs": epochs}
    _, engine_a, whole = fit(tiny_world, dropout_model, tmp_path / "a", max_steps=4, global_seed=1, **kwargs)
    fit(tiny_world, dropout_model, tmp_path / "b", max_steps=2, global_seed=2, **kwargs)
    module, engine_b, resumed = fit(
        tiny_world, dropout_model, tmp_path / "b", 4, global_seed=3, ckpt_path=str(tmp_path / "b/last.ckpt"), **kwargs
    )

    assert sorted(resumed.logged) == [3, 4]
    for step in (3, 4):
        assert resumed.rollouts[step] == whole.rollouts[step]  # same prompts, same weights, same sampling seed
        assert resumed.logged[step] == whole.logged[step]  # bit-identical: loss, rewards, μ, lr, grad norm, ...
    # The skipped step 2 (each of its updates) was counted before the checkpoint and is still counted after it.
    assert [resumed.logged[s]["train/skipped_steps"] for s in (3, 4)] == [epochs**2] * 2
    assert len({whole.logged[s]["train/lr"] for s in (1, 3, 4)}) == 3  # the scheduler moves: restoring it matters
    # Seeds are a function of (seed, step, rank): distinct per step, and the resumed run reuses steps 3-4's.
    assert len(set(engine_a.seeds)) == 4 and engine_b.seeds == engine_a.seeds[2:]
    # The engine receives the restored weights (not the initial ones) before the resumed run's first rollout.
    assert torch.equal(engine_b.loads[0], engine_a.loads[2]) and not torch.equal(engine_b.loads[0], engine_a.loads[0])
    if lora is not None:  # the checkpoint holds the adapters and their optimizer state, not the frozen base
        saved = torch.load(tmp_path / "b/last.ckpt", weights_only=False)
        trained = (".lora_", ".modules_to_save.")  # adapters, and the embeddings' trained copy (the tied head's too)
        assert saved["state_dict"] and all(any(part in key for part in trained) for key in saved["state_dict"])
        copy = "scorer.lm.model.embed_tokens.modules_to_save.default.weight"
        assert (copy in saved["state_dict"]) == bool(lora.modules_to_save)
        adapters = [p for p in module.parameters() if p.requires_grad]
        assert len(saved["optimizer_states"][0]["state"]) == len(adapters)
        assert saved["hyper_parameters"]["lora"] == lora  # the setting round-trips: a resume compares it
        assert hparams_differences(saved, module, module.trainer.datamodule) == []


# ----- a real process, killed -------------------------------------------------------------------------------------
def write_config(path: Path, world: Path, root: Path, seed: int, stall_at: int | None = None) -> Path:
    """A small CHORD run; its ModelCheckpoint has no ``dirpath``: checkpoints go to the run's own folder."""
    config = {
        "seed_everything": seed,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 4,
            "log_every_n_steps": 1,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": [
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": ""}}
            ],
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True, "every_n_train_steps": 2},
                },
                {"class_path": "test_resume.StallAt", "init_args": {"step": stall_at, "marker": str(root / "stalled")}},
            ],
        },
        "rollout": {"max_new_tokens": 8, "reward_fn": "test_resume.digit_share"},
        "model": {
            "model": str(world / "model"),
            "objective": {
                "class_path": "lit_chord.objectives.chord.Chord",
                "init_args": {"mu_warmup_steps": 2, "mu_decay_steps": 2, "mu_peak": 0.8, "mu_valley": 0.2},
            },
            "micro_batch_size": 4,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
            "lr_scheduler": {
                "class_path": "torch.optim.lr_scheduler.StepLR",
                "init_args": {"step_size": 1, "gamma": 0.7},
            },
        },
        "data": {
            "tokenizer": str(world / "model"),
            "prompt_data": str(world / "prompts.jsonl"),
            "expert_data": str(world / "expert.jsonl"),
            "prompts_per_step": 2,
            "num_generations": 4,
            "expert_data_ratio": 0.2,
            "system_prompt": None,
            "max_prompt_length": 64,
            "max_response_length": 32,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path, *args: str) -> subprocess.Popen:
    """``python -m lit_chord fit --config ...`` with its output in ``<config>.log`` (a pipe could fill and block)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "lit_chord", "fit", "--config", str(config), *args]
    with config.with_suffix(".log").open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = config.with_suffix(".log")
    return process


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    process.wait(timeout=timeout)
    output = process.log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def step_rows(metrics_csv: Path) -> dict[str, dict[str, str]]:
    """Training rows of a CSVLogger file by step, as the exact strings written (float repr: exact)."""
    with metrics_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


@pytest.mark.slow
def test_killed_cli_run_resumed_with_ckpt_path_last_equals_an_uninterrupted_run(tiny_world, tmp_path):
    whole_root, killed_root = tmp_path / "whole", tmp_path / "killed"
    whole = launch(write_config(tmp_path / "whole.yaml", tiny_world, whole_root, seed=1))
    killed = launch(write_config(tmp_path / "killed.yaml", tiny_world, killed_root, seed=2, stall_at=2))
    try:
        deadline = time.monotonic() + 240
        while not (killed_root / "stalled").exists():
            assert killed.poll() is None, killed.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)  # no clean-up, no exception hooks, no on-exception checkpoint
        killed.wait(timeout=30)
        assert killed.returncode == -signal.SIGKILL
        last = killed_root / "version_0/checkpoints/last.ckpt"
        assert torch.load(last, weights_only=False)["global_step"] == 2

        resume_config = write_config(tmp_path / "resume.yaml", tiny_world, killed_root, seed=3)
        output = finish(launch(resume_config, "--ckpt_path", "last"))
        assert f"resuming {killed_root}/version_0 from {last} at step 2" in output
        assert "Restored all states from the checkpoint" in output
        finish(whole)
    finally:
        for process in (whole, killed):
            if process.poll() is None:
                process.kill()
                process.wait()

    # The resumed run logs into the killed run's folder, after the rows it had logged (flushed every step).
    expected = step_rows(whole_root / "version_0/metrics.csv")
    assert not (killed_root / "version_1").exists()
    assert len(expected) == 4 and step_rows(killed_root / "version_0/metrics.csv") == expected


# ----- atomic checkpoints -----------------------------------------------------------------------------------------
KILLED_DURING_SAVE = """
import os, signal, sys, torch
from fsspec.implementations.local import LocalFileOpener
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO  # what Trainer.save_checkpoint writes through

checkpoint_io, path = TorchCheckpointIO(), sys.argv[1]
checkpoint_io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(10_000)}}, path)
write = LocalFileOpener.write

def write_half_then_die(self, data):
    write(self, data[: len(data) // 2])
    self.flush()
    os.kill(os.getpid(), signal.SIGKILL)

LocalFileOpener.write = write_half_then_die
checkpoint_io.save_checkpoint({"global_step": 4, "state_dict": {"w": torch.ones(10_000)}}, path)
"""


def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    """Lightning writes to a temporary file and renames it over the checkpoint (fsspec transaction); the temporary
    file lives in $TMPDIR, so the rename is atomic only when $TMPDIR is on the checkpoint's filesystem."""
    path = tmp_path / "last.ckpt"
    result = subprocess.run([sys.executable, "-c", KILLED_DURING_SAVE, str(path)], timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert torch.load(path, weights_only=False)["global_step"] == 2


def test_resuming_with_other_data_streams_warns(tiny_world):
    datamodule = ChordDataModule(
        tokenizer=str(tiny_world / "model"),
        prompt_data=str(tiny_world / "heldout.jsonl"),
        prompts_per_step=2,
        num_generations=2,
    )
    datamodule.setup("fit")
    state = datamodule.state_dict()
    datamodule.load_state_dict(state)  # the same streams: silent
    with pytest.warns(UserWarning, match=r"seed 7 -> 42; prompts_per_step 4 -> 2"):
        datamodule.load_state_dict({**state, "prompts_per_step": 4, "seed": 7})


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant", "scheduled"])
def test_resuming_with_another_lr_warns_that_the_checkpoints_applies(tiny_world, tmp_path, recwarn, scheduled):
    """The checkpoint's optimizer state (lr 1e-2; with StepLR its initial_lr 1e-2, lr 5e-3 after one step) overrides
    a resumed run's lr 1e-3: one warning names both. A fresh run says nothing."""

    def fit_lr(lr: float, max_steps: int, ckpt_path: str | None = None) -> ChordModule:
        module = ChordModule(
            model=str(tiny_world / "model"),
            optimizer=lambda p: torch.optim.AdamW(p, lr=lr),
            lr_scheduler=(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)) if scheduled else None,
        )
        checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
        rollout = RolloutCallback(engine=EchoEngine(), reward_fn=digit_share)
        trainer = cpu_trainer(enable_checkpointing=True, max_steps=max_steps, callbacks=[rollout, checkpoint])
        trainer.fit(module, datamodule=tiny_datamodule(tiny_world), ckpt_path=ckpt_path)
        return module

    fit_lr(1e-2, max_steps=1)
    assert not [w for w in recwarn if "lr" in str(w.message)]
    with pytest.warns(UserWarning, match=r"the optimizer's lr 0\.001 does not apply: .* keeps lr 0\.01$"):
        module = fit_lr(1e-3, max_steps=2, ckpt_path=str(tmp_path / "last.ckpt"))
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == (1e-2 * 0.5**2 if scheduled else 1e-2)
