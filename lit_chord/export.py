"""``PolicyExport``: at the end of ``fit``, save the policy and tokenizer with ``save_pretrained`` and say where
everything is, with the held-out accuracy before and after training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_chord.module import ChordModule


class PolicyExport(Callback):
    def __init__(self, dirname: str = "export") -> None:
        """Where to export.

        Args:
            dirname: Folder under the run's log directory for the exported model (loadable with
                ``AutoModelForCausalLM.from_pretrained``).
        """
        super().__init__()
        self.dirname = dirname
        self.path: Path | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self.path = run_dir / self.dirname
        module = cast("ChordModule", pl_module)
        state = {name: tensor.cpu() for name, tensor in module.full_parameters()}  # collective if sharded
        if trainer.is_global_zero:
            assert module.policy is not None, "configure_model has not run"
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one small file says nothing
            try:
                module.policy.save_pretrained(self.path, state_dict=state)
            finally:
                hf_logging.enable_progress_bar()
            trainer.datamodule.tokenizer.save_pretrained(self.path)  # type: ignore[attr-defined]
        self.report(trainer, pl_module, run_dir)

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
        if pl_module.val_before is not None and after is not None:
            lines.append(f"held-out accuracy: {pl_module.val_before:.3f} before -> {float(after):.3f} after")
        print("\n".join(lines))
