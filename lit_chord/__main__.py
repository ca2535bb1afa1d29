"""Command line: ``python -m lit_chord fit --config configs/demo.yaml [--model.mu_peak 0.5 ...]``."""

from lightning.pytorch.cli import LightningCLI

from lit_chord.datamodule import ChordDataModule
from lit_chord.module import ChordModule


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    return LightningCLI(
        ChordModule,
        ChordDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
