"""Command line: ``python -m lit_chord fit --config configs/demo.yaml [--model.mu_peak 0.5 ...]``."""

import warnings

from lightning.pytorch.cli import LightningCLI

from lit_chord.datamodule import ChordDataModule
from lit_chord.module import ChordModule

# Lightning warns that with manual optimization a checkpoint holds the weights after the step's update, and prints
# a recipe to save them from before it. After the update is what resuming needs: the next step starts from there.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


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
