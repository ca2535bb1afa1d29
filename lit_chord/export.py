"""``PolicyExport``: at the end of ``fit``, save the policy and tokenizer with ``save_pretrained`` and say where
everything is, with the held-out accuracy before and after training."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only


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
        state = {name: tensor.cpu() for name, tensor in pl_module.full_parameters()}  # collective if sharded
        if trainer.is_global_zero:
            pl_module.policy.save_pretrained(self.path, state_dict=state)
            trainer.datamodule.tokenizer.save_pretrained(self.path)
        self.report(trainer, pl_module, run_dir)

    @rank_zero_only
    def report(self, trainer: Trainer, pl_module: LightningModule, run_dir: Path) -> None:
        after = trainer.callback_metrics.get("val/accuracy")
        checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
        lines = [
            f"run directory:   {run_dir}",
            f"metrics (CSV):   {run_dir / 'metrics.csv'}",
            f"last checkpoint: {checkpoint or '(none)'}",
            f"exported policy: {self.path}",
        ]
        if pl_module.val_before is not None and after is not None:
            lines.append(f"held-out accuracy: {pl_module.val_before:.3f} before -> {float(after):.3f} after")
        print("\n".join(lines))
