"""Two optimizer steps on 2 CPU ranks, each rank generating with its own in-process vLLM engine.

Used by tests/test_distributed.py: under a distributed trainer every rank builds its engine with vLLM's
``external_launcher`` backend and receives the policy's weights (gathered from the shards under FSDP2) before
each rollout. Each rank writes ``OUT_DIR/rank{r}.json``: its rollouts per step and the logged metrics.

Usage: python vllm_ranks.py WORLD_DIR OUT_DIR {ddp,fsdp2}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import cpu_trainer, tiny_datamodule  # noqa: E402

from lit_chord.engines.vllm_engine import VLLMEngine  # noqa: E402
from lit_chord.module import ChordModule  # noqa: E402
from lit_chord.rollout_callback import RolloutCallback  # noqa: E402


class Keep(Callback):
    """Per step: the rollouts, the largest |engine − trainer| logprob over all their tokens (truncated rows too),
    taken before the update with the weights the engine sampled from, and the logged metrics."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # after RolloutCallback's (list order)
        rows = batch.train
        with torch.no_grad():  # under FSDP2 a collective: every rank runs it
            mine, _ = pl_module.token_logprobs(pl_module.scorer, rows, batch.sampling.temperature, with_entropy=False)
        engine = rows.engine_logprobs[:, :-1]
        scored = ~engine.isnan()
        assert scored.sum() >= len(batch.rollouts), "vLLM reported no logprobs"
        self.gap = (mine - engine).abs()[scored].max().item()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.steps.append({"rollouts": [r.response_ids for r in batch.rollouts], "gap": self.gap, "metrics": metrics})


def main(world: str, out: str, layout: str) -> None:
    torch.set_num_threads(1)
    strategy = {
        "ddp": DDPStrategy(process_group_backend="gloo"),
        "fsdp2": ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    }[layout]
    module = ChordModule(
        model=f"{world}/model", micro_batch_size=4, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2)
    )
    keep = Keep()
    engine = VLLMEngine(dtype="float32", enforce_eager=True, max_model_len=128)
    trainer = cpu_trainer(
        devices=2, strategy=strategy, max_steps=2, callbacks=[RolloutCallback(engine=engine, max_new_tokens=16), keep]
    )
    trainer.fit(module, datamodule=tiny_datamodule(Path(world), prompts_per_step=4))
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(keep.steps))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
