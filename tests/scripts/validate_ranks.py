"""The sanity check and one validation of two held-out sets on N CPU ranks; each rank saves the rows it scored.

Used by tests/test_distributed.py to compare 1 rank against 2 (DDP, FSDP2). The engine is deterministic: a
completion is a function of the prompt and, for samples, of the per-prompt seed that ``VLLMEngine`` would give
the request (``seed + i·n + j`` for the call's i-th prompt), so the metrics of 1 and 2 ranks agree exactly when
every prompt is scored once and seeded from its index in the set. ``uses_live_policy`` makes FSDP2 gather the
policy around each generation, a collective that hangs unless every rank runs as many batches.

Writes ``rank<r>.json`` (the rows each rank scored: stage, set, batch, index, counted) and, from rank 0,
``metrics.json`` (the validation's logged metrics and the sanity check's ``val_before``).

Usage: python validate_ranks.py WORLD_DIR SETS_DIR OUT_DIR DEVICES {single,ddp,fsdp2}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import cpu_trainer  # noqa: E402

from lit_chord.datamodule import ChordDataModule  # noqa: E402
from lit_chord.engines import Completion, SamplingConfig  # noqa: E402
from lit_chord.module import ChordModule  # noqa: E402
from lit_chord.objectives import Grpo  # noqa: E402
from lit_chord.rollout_callback import RolloutCallback  # noqa: E402
from lit_chord.samples import SampleTable  # noqa: E402


class SeededEchoEngine:
    """Completion j of the call's i-th prompt: 1 to 4 copies of one of its tokens, then a stop token; which and how
    many follow from the prompt and, when sampling, from ``seed + i·n + j``."""

    uses_live_policy = True

    def attach(self, policy, stop_token_ids, pad_token_id):
        self.stop = stop_token_ids[0]

    def generate(self, prompt_ids, n, sampling: SamplingConfig):
        groups = []
        for i, ids in enumerate(prompt_ids):
            group = []
            for j in range(n):
                key = sum(ids) + (0 if sampling.seed is None else 7 * (sampling.seed + i * n + j))
                group.append(Completion([ids[key % len(ids)]] * (1 + key % 4) + [self.stop], finished=True))
            groups.append(group)
        return groups

    def load_weights(self, named_tensors):
        for _ in named_tensors:  # under FSDP2 each full tensor is a collective: take part in every one
            pass


def parity_reward(completion: str, answer: str) -> float:
    return float(sum(map(ord, completion + answer)) % 3 == 0)


class Rows(Callback):
    """The rows this rank scored, in the sanity check and in the validation."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        stage = "sanity" if trainer.sanity_checking else "validate"
        name = trainer.datamodule.val_set_names[dataloader_idx]
        for index, counted in zip(batch.indices, batch.counted, strict=True):
            self.rows.append({"stage": stage, "set": name, "batch": batch_idx, "index": index, "counted": counted})


def main(world: str, sets: str, out: str, devices: int, layout: str) -> None:
    torch.set_num_threads(1)
    strategy = {
        "single": SingleDeviceStrategy(device="cpu"),
        "ddp": DDPStrategy(process_group_backend="gloo"),
        "fsdp2": ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
    }[layout]
    module = ChordModule(model=f"{world}/model", objective=Grpo())
    data = ChordDataModule(
        tokenizer=f"{world}/model",
        prompt_data=f"{world}/prompts.jsonl",
        val_data={"odd": f"{sets}/odd.jsonl", "small": f"{sets}/small.jsonl"},
        val_batch_size=4,  # several batches per rank, and a short last one
        prompts_per_step=2,
        num_generations=2,
        expert_data_ratio=0.0,
        system_prompt=None,
        max_prompt_length=64,
    )
    rows = Rows()
    engine = SeededEchoEngine()
    trainer = cpu_trainer(
        devices=devices,
        strategy=strategy,
        max_steps=0,  # fit runs only the sanity check
        num_sanity_val_steps=-1,  # the whole sets, as configs/demo.yaml asks
        limit_val_batches=1.0,
        default_root_dir=out,
        callbacks=[
            RolloutCallback(engine=engine, reward_fn=parity_reward, val_num_samples=3, val_pass_k=2),
            rows,
            SampleTable(num_prompts=3),  # writes from rank 0 at each validation's end
        ],
    )
    trainer.fit(module, datamodule=data)
    trainer.validate(module, datamodule=data)
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(rows.rows))
    if trainer.is_global_zero:
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        Path(out, "metrics.json").write_text(json.dumps({"metrics": metrics, "val_before": module.held_out.before}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
