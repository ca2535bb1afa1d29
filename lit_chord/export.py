"""``PolicyExport``: at the end of ``fit``, save the policy and tokenizer with ``save_pretrained`` and say where
everything is, with the held-out accuracy before and after training.

With LoRA (``model.lora``) the folder holds the merged model (``W + (α/r)·B·A``: it loads like any model, in
``transformers`` and vLLM) and, in ``adapter/``, the peft adapter alone for ``PeftModel.from_pretrained(base, ...)``.
A randomly initialized base (``model.random_init``) exists nowhere on disk, so it is written to ``base/`` and the
adapter points at it."""

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
        lora = module.lora
        adapter = lora.adapter_state() if lora is not None else {}  # collective if sharded
        base = {}
        if lora is not None and module.hp.random_init:
            base = {name: tensor.cpu() for name, tensor in lora.merged_parameters(merge=False)}
        if trainer.is_global_zero:
            assert module.policy is not None, "configure_model has not run"
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one small file says nothing
            base_path = self.path / "base" if base else None
            try:
                module.policy.save_pretrained(self.path, state_dict=state)
                if base_path is not None:  # save_pretrained empties the dict it is given
                    module.policy.save_pretrained(base_path, state_dict=base)
            finally:
                hf_logging.enable_progress_bar()
            trainer.datamodule.tokenizer.save_pretrained(self.path)  # type: ignore[attr-defined]
            if lora is not None:
                lora.save_adapter(self.path / "adapter", adapter, base=str(base_path) if base_path else None)
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
        if cast("ChordModule", pl_module).lora is not None:
            lines.append(f"LoRA adapter:    {run_dir / self.dirname / 'adapter'} (the policy above is merged)")
        if pl_module.val_before is not None and after is not None:
            lines.append(f"held-out accuracy: {pl_module.val_before:.3f} before -> {float(after):.3f} after")
        print("\n".join(lines))
