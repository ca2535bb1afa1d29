"""``SampleTable``: a few held-out prompts, the policy's greedy completions and their rewards, per validation.

Scalars say that accuracy moved; reading completions says why (format learned, the expert's slip copied,
answers truncated). With a ``WandbLogger`` the rows go to a wandb Table (``val/samples``); otherwise to
``samples/step_<k>.jsonl`` under the run's log directory, one JSON object per row (k: the optimizer step whose
weights answered, the checkpoint's under ``validate --ckpt_path``). The first ``num_prompts`` of
each held-out set are shown every time, so tables of successive validations compare the same prompts. Rank 0
writes its own shard's prompts only.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from lit_chord.batch import ValBatch
from lit_chord.validation import set_names, validated_step

COLUMNS = ["step", "set", "prompt", "answer", "completion", "reward", "samples_correct", "pass@k"]


class SampleTable(Callback):
    def __init__(self, num_prompts: int = 8, dirname: str = "samples", key: str = "val/samples") -> None:
        """How many rows, and where they go.

        Args:
            num_prompts: Rows per held-out set and validation run: its first ``num_prompts`` prompts.
            dirname: Folder under the run's log directory for ``step_<k>.jsonl`` (without a wandb logger).
            key: Name of the wandb Table (with a ``WandbLogger``).
        """
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.num_prompts, self.dirname, self.key = num_prompts, dirname, key
        self.rows: list[dict] = []
        self.path: Path | None = None  # the last JSONL file written

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs,
        batch: ValBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.is_global_zero:
            return
        names = set_names(trainer)
        shown = sum(row["set"] == names[dataloader_idx] for row in self.rows)
        for prompt, result in list(zip(batch.prompts, batch.results, strict=True))[: self.num_prompts - shown]:
            self.rows.append(
                {
                    "step": validated_step(trainer),
                    "set": names[dataloader_idx],
                    "prompt": prompt.text,
                    "answer": prompt.answer,
                    "completion": result.completion,
                    "reward": result.greedy_reward,
                    "samples_correct": f"{int(sum(result.sample_correct))}/{len(result.sample_correct)}",
                    "pass@k": result.pass_at_k,
                }
            )

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir broadcasts rank 0's directory, a collective: every rank must ask, not only rank 0.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or not self.rows:
            return
        wandb = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb:
            data = [[row[column] for column in COLUMNS] for row in self.rows]
            wandb[0].log_table(key=self.key, columns=COLUMNS, data=data, step=validated_step(trainer))
            return
        self.path = log_dir / self.dirname / f"step_{validated_step(trainer)}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
