"""GPU checks (skipped without CUDA): FSDP2 + vLLM on one GPU, and a few steps of the 1.5B recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
CONFIGS = Path(__file__).parent.parent / "configs"


def test_fsdp2_with_vllm_engine_trains_two_steps(tiny_world, tmp_path):
    pytest.importorskip("vllm")
    import lightning as L
    import torch
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lit_chord.datamodule import ChordDataModule
    from lit_chord.engines.vllm_engine import VLLMEngine
    from lit_chord.module import ChordModule
    from lit_chord.rollout_callback import RolloutCallback

    module = ChordModule(model=str(tiny_world / "model"), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    data = ChordDataModule(
        tokenizer=str(tiny_world / "model"),
        prompt_data=str(tiny_world / "prompts.jsonl"),
        expert_data=str(tiny_world / "expert.jsonl"),
        prompts_per_step=4,
        num_generations=4,
        system_prompt=None,
        max_prompt_length=64,
        max_response_length=32,
    )
    engine = VLLMEngine(gpu_memory_utilization=0.2, dtype="float32", max_model_len=128)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=ModelParallelStrategy(data_parallel_size=1),
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[RolloutCallback(engine=engine, max_new_tokens=16)],
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    assert float(trainer.callback_metrics["rollout/sync_seconds"]) > 0
    if "train/mfu" in trainer.callback_metrics:  # logged where Lightning knows the card's peak FLOP/s
        assert 0 < float(trainer.callback_metrics["train/mfu"]) < 1


@pytest.mark.slow
def test_qwen_1_5b_recipe_runs_a_few_steps(tmp_path):
    """Needs Qwen2.5-1.5B-Instruct in the local Hugging Face cache and data/openr1 prepared."""
    pytest.importorskip("vllm")
    if not (CONFIGS.parent / "data" / "openr1" / "sft.jsonl").exists():
        pytest.skip("data/openr1 not prepared")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lit_chord.__main__ import main

    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "chord_qwen2.5_1.5b_1gpu.yaml"),
            "--trainer.max_steps",
            "3",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "false",
        ]
    )
