"""Command line: ``python -m lit_chord fit --config configs/demo.yaml [--model.objective.mu_peak 0.5 ...]``.

``main()`` without ``args`` is the command line (``python -m lit_chord`` and the ``lit-chord`` script): it exits, with
code 0, or with code 2 and one line on stderr for a user error (``cli.py``). With ``args`` (tests, notebooks) it
returns the CLI and lets every exception through.
"""

import sys

from lightning.pytorch.cli import LightningCLI

from lit_chord.cli import ChordCLI, command_line
from lit_chord.datamodule import ChordDataModule
from lit_chord.module import ChordModule


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    if args is None:
        sys.exit(command_line(lambda: build(None, run)))
    return build(args, run)


def build(args: list[str] | None, run: bool) -> LightningCLI:
    return ChordCLI(ChordModule, ChordDataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
