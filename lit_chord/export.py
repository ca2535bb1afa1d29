"""``PolicyExport``: at the end of ``fit``, save the policy and tokenizer with ``save_pretrained`` and say where
everything is, with the held-out accuracy before and after training.

With LoRA (``model.lora``) the folder holds the merged model (``W + (α/r)·B·A``: it loads like any model, in
``transformers`` and vLLM) and, in ``adapter/``, the peft adapter alone for ``PeftModel.from_pretrained(base, ...)``.
A randomly initialized base (``model.random_init``) exists nowhere on disk, so it is written to ``base/`` and the
adapter points at it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from lit_chord.datamodule import ChordDataModule

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_chord.module import ChordModule


class PolicyExport(Callback):
    def __init__(self, dirname: str = "export", best_by: str | None = None) -> None:
        """Where to export, and whether to keep the best policy too.

        Args:
            dirname: Folder under the run's log directory for the exported model (loadable with
                ``AutoModelForCausalLM.from_pretrained``).
            best_by: A validation metric, e.g. ``val/heldout/avg@4``: each time a validation after training
                began sets a new maximum, the policy is exported to ``<dirname>_best`` (with ``best.json``: the step
                and the value), the paper's "SFT-best" checkpoint selection. None: the final policy only.
        """
        super().__init__()
        self.dirname, self.best_by = dirname, best_by
        self.path: Path | None = None
        self.best: dict | None = None  # {"step", "value"} of the best validation so far (kept in checkpoints)
        self.before: float | None = None  # best_by's value before training (the sanity check), not a candidate

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = self.run_dir(trainer)
        self.path = run_dir / self.dirname
        self.save(trainer, cast("ChordModule", pl_module), self.path)
        self.report(trainer, pl_module, run_dir)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.best_by is None:
            return
        if trainer.sanity_checking:  # the policy before training: reported beside the best, never exported as it
            before = trainer.callback_metrics.get(self.best_by)
            if before is not None and trainer.global_step == 0:  # a resumed run's sanity check sees trained weights
                self.before = float(before)
            return
        if self.best_by not in trainer.callback_metrics:
            raise KeyError(
                f"PolicyExport.best_by: no metric {self.best_by!r} was logged; validation logged "
                f"{', '.join(sorted(k for k in trainer.callback_metrics if k.startswith('val/')))}"
            )
        value = float(trainer.callback_metrics[self.best_by])
        if self.best is not None and value <= self.best["value"]:
            return
        self.best = {"step": trainer.global_step, "value": value, "metric": self.best_by}
        path = self.run_dir(trainer) / f"{self.dirname}_best"
        self.save(trainer, cast("ChordModule", pl_module), path)
        if trainer.is_global_zero:
            (path / "best.json").write_text(json.dumps(self.best) + "\n")

    @staticmethod
    def run_dir(trainer: Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir)

    def state_dict(self) -> dict:
        return {"best": self.best, "before": self.before}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.before = state_dict.get("best"), state_dict.get("before")

    def save(self, trainer: Trainer, module: ChordModule, path: Path) -> None:
        """``save_pretrained`` the policy (merged, and the adapter apart, with LoRA) and the tokenizer into ``path``;
        every rank calls it (gathering a sharded policy is a collective), rank 0 writes."""
        lora = module.lora
        dtype = lora.base_dtype if lora is not None else None  # LoRA merges in float32: store the base's dtype
        state = {name: tensor.to(dtype).cpu() for name, tensor in module.full_parameters()}  # collective if sharded
        adapter = lora.adapter_state() if lora is not None else {}  # collective if sharded
        base = {}
        if lora is not None and module.hp.random_init:
            base = {name: tensor.cpu() for name, tensor in lora.merged_parameters(merge=False)}
        if trainer.is_global_zero:
            assert module.policy is not None, "configure_model has not run"
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one small file says nothing
            base_path = path / "base" if base else None
            try:
                module.policy.save_pretrained(path, state_dict=state)
                if base_path is not None:  # save_pretrained empties the dict it is given
                    module.policy.save_pretrained(base_path, state_dict=base)
            finally:
                hf_logging.enable_progress_bar()
            tokenizer = ChordDataModule.of(trainer).tokenizer
            assert tokenizer is not None, "the datamodule's setup has not run"
            tokenizer.save_pretrained(path)
            if lora is not None:
                lora.save_adapter(path / "adapter", adapter, base=str(base_path.resolve()) if base_path else None)

    @rank_zero_only
    def report(self, trainer: Trainer, pl_module: LightningModule, run_dir: Path) -> None:
        after = trainer.callback_metrics.get("val/accuracy")
        callback = cast("ModelCheckpoint | None", trainer.checkpoint_callback)  # the first ModelCheckpoint
        checkpoint = callback.last_model_path if callback else None
        lines = [
            f"run directory:   {run_dir}",
            f"metrics (CSV):   {run_dir / 'metrics.csv'}",
            f"last checkpoint: {checkpoint or '(none)'}",
            f"exported policy: {self.path}",
        ]
        if cast("ChordModule", pl_module).lora is not None:
            lines.append(f"LoRA adapter:    {run_dir / self.dirname / 'adapter'} (the policy above is merged)")
        if self.best is not None:
            where = run_dir / f"{self.dirname}_best"
            lines.append(
                f"best policy:     {where} ({self.best_by} {self.best['value']:.3f} at step {self.best['step']})"
            )
            if self.before is not None and self.before > self.best["value"]:
                lines.append(
                    f"                 (before training it was {self.before:.3f} at step 0: the best is chosen among "
                    "the trained policies only)"
                )
        before = cast("ChordModule", pl_module).held_out.before
        if before is not None and after is not None:
            lines.append(f"held-out accuracy: {before:.3f} before -> {float(after):.3f} after")
        print("\n".join(lines))
