"""One CHORD optimizer step on N CPU ranks; rank 0 saves the logged loss, rollout/* and the updated weights.

Used by tests/test_distributed.py to compare 1 rank against 2 (DDP, FSDP2). Rollouts come from a deterministic
engine (completions are a function of the prompt), so every layout trains on the same rows; SGD with lr 1 and
no clipping makes the weight change equal to minus the gradient.

Usage: python one_step.py WORLD_DIR OUT_FILE DEVICES {ddp,fsdp2,single,slurm}[+padding_free]
(``+padding_free``: padding-free passes of at most 60 real tokens instead of micro-batches of 3 rows.)
(``+lora``: LoRA adapters of rank 4 on the frozen base, the tied embeddings trained in full, a KL penalty to the
base; the saved weights are merged.)
(``+updates``: two epochs of two mini-batches, four updates of one rollout batch.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import EchoEngine, cpu_trainer  # noqa: E402

from lit_chord.datamodule import ChordDataModule  # noqa: E402
from lit_chord.lora import LoraSettings  # noqa: E402
from lit_chord.module import ChordModule  # noqa: E402
from lit_chord.objectives import Chord, Sft  # noqa: E402
from lit_chord.rollout_callback import RolloutCallback  # noqa: E402


def length_reward(completion: str, answer: str) -> dict[str, float]:
    """Varies within the groups of odd answers and is 0 throughout the others (which count in zero_std_groups);
    judges a format too, so that ``rollout/format_ok`` is logged."""
    reward = float(len(completion) % 3) if int(answer) % 2 else 0.0
    return {"reward": reward, "format": float(len(completion) % 2)}


class Keep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = float(trainer.callback_metrics["train/loss"])
        self.loss_sft = float(trainer.callback_metrics["train/loss_sft"])
        self.ratio_max = float(trainer.callback_metrics.get("train/ratio_max", 0.0))  # SFT: no rollouts
        self.rollout = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("rollout/")}


def main(world: str, out: str, devices: int, layout: str) -> None:
    torch.set_num_threads(1)
    layout, _, variant = layout.partition("+")
    cut = {"max_tokens_per_micro_batch": 60, "padding_free": True} if variant == "padding_free" else {}
    if variant == "lora":
        cut = {"lora": LoraSettings(rank=4, alpha=8.0, modules_to_save=["embed_tokens"])}
    if variant == "updates":
        cut = {"ppo_epochs": 2, "ppo_mini_batches": 2}
    objective = Chord(mu_peak=0.5, mu_valley=0.5, mu_decay_steps=0, kl_coef=0.1 if variant == "lora" else 0.0)
    if variant.startswith("sft"):  # SFT alone: one row per pass ("sft"), or the whole step in one pass ("sft_full")
        objective, cut = Sft(), {"micro_batch_size": 64 if variant == "sft_full" else 1}
    strategy = {
        "single": SingleDeviceStrategy(device="cpu"),
        "ddp": DDPStrategy(process_group_backend="gloo"),
        "slurm": DDPStrategy(process_group_backend="gloo"),  # launched by srun (or as srun would): no re-spawn
        "fsdp2": ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
    }[layout]
    module = ChordModule(
        model=f"{world}/model",
        max_grad_norm=0.0,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        objective=objective,
        **{"micro_batch_size": 3, **cut},
    )
    data = ChordDataModule(
        tokenizer=f"{world}/model",
        prompt_data=f"{world}/prompts.jsonl",
        expert_data=f"{world}/expert.jsonl",
        prompts_per_step=4,
        num_generations=3,
        expert_data_ratio=0.25,
        system_prompt="sys",
        max_prompt_length=64,
        max_response_length=32,
    )
    keep = Keep()
    trainer = cpu_trainer(
        devices=devices,
        strategy=strategy,
        max_steps=1,
        callbacks=[RolloutCallback(engine=EchoEngine(), reward_fn=length_reward), keep],
    )
    environment = getattr(trainer.strategy, "cluster_environment", None)
    print("cluster environment:", type(environment).__name__, flush=True)
    trainer.fit(module, datamodule=data)
    weights = dict(module.full_parameters())  # a collective under FSDP2: every rank takes part
    if trainer.is_global_zero:
        weights = {name: tensor.cpu() for name, tensor in weights.items()}
        logged = {"loss": keep.loss, "loss_sft": keep.loss_sft, "ratio_max": keep.ratio_max, "rollout": keep.rollout}
        torch.save({**logged, "weights": weights}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
