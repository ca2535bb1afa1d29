"""The command line's error boundary, its early checks and its quiet defaults.

Why: LightningCLI ends a user's mistake (a null answer on line 2, ``mu_peak: 2``, a GPU recipe on a laptop, a path
relative to another folder) in a 40-line traceback with the useful line last, and every run prints tips and
deprecation warnings that say nothing about it. Here:

- ``ChordCLI`` turns the errors that are config errors into our ``ConfigError`` while the classes are built: the
  ``ValueError`` of our (or Lightning's) ``__init__`` checks, Lightning's ``MisconfigurationException``, a GPU
  accelerator on a machine without one.
- Before ``fit`` it checks the cheap things: every local path in the config exists, and a hub name (a model, or a
  ``datasets`` name given as a ``data.*`` source) is in the local cache or the hub answers one short request (none in
  offline mode), so a typo fails in seconds, not after a minute of download retries. Data files are read and checked
  by the datamodule's ``setup``, which Lightning runs before ``configure_model``, so bad data, too, fails before the
  model is loaded.
- Then it gives the run its own folder and resolves ``--ckpt_path last`` to the checkpoint of the run to continue,
  refusing one with other hyper-parameters unless ``--resume_anyway true`` (``lit_chord.runs``); Ctrl-C and SIGTERM
  save the step in progress once it completes.
- The ``RolloutCallback`` is a config group of its own, ``rollout`` (``lit_chord.cli_parser``), first among the
  callbacks; the subcommands are ``fit`` and ``validate`` (the module has no test or predict step).
- ``command_line`` prints a ``UserError`` (and an ``OSError`` out of ``from_pretrained``) as one line, with exit
  code 2. Anything else is a bug and keeps its traceback; ``LIT_CHORD_DEBUG=1`` shows it for user errors too.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning
from huggingface_hub.errors import HFValidationError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from lit_chord.cli_parser import ROLLOUT_GROUP, ChordParser, config_files, program_name, refuse_listed_rollout_callback
from lit_chord.errors import ConfigError, UserError
from lit_chord.held_out import val_set_sources
from lit_chord.hub import dataset_problem, is_repo_id, pretrained_problem
from lit_chord.records import preparation_hint
from lit_chord.rollout_callback import RolloutCallback
from lit_chord.runs import RESUME_FLAG, last_checkpoint, prepare_fit

DEBUG_ENV = "LIT_CHORD_DEBUG"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")  # any other data source is a ``datasets`` hub name
DESCRIPTION = "CHORD: SFT and GRPO in one training step (arXiv 2508.11408). `fit --config configs/demo.yaml` trains."
CKPT_KEYWORDS = ("last", "best", "hpc")  # ``ckpt_path`` values Lightning resolves itself
# Where a ValueError raised while the config's classes are built means a bad value rather than a bug.
# A class chosen by class_path whose own check refused a value (``model.objective.mu_peak must lie in [0, 1]``)
# reaches us inside jsonargparse's "Does not validate against any of the Union subtypes", one line per type tried.
OUR_CHECK_IN_A_UNION = re.compile(
    r"^Does not validate against any of the Union subtypes.*?^\s+- (model\.\S+ .+?)$", re.M | re.S
)
CHECKING_PACKAGES = (Path(__file__).parent, Path(lightning.__file__).parent)

# ----- quiet by default -------------------------------------------------------------------------------------------
# Lightning warns that with manual optimization a checkpoint holds the weights after the step's update, and prints
# a recipe to save them from before it. After the update is what resuming needs: the next step starts from there.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# Lightning 2.6's CombinedLoader flattens the dataloaders with torch's ``LeafSpec``, which recent torch deprecates.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def _not_the_litlogger_tip(record: logging.LogRecord) -> bool:
    """Lightning advertises its cloud logger at every start of a run without one."""
    return "try installing [litlogger]" not in record.getMessage()


# Lightning's rank-zero messages go through one of these, whichever of the two modules was imported last.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_not_the_litlogger_tip)


class ChordCLI(LightningCLI):
    """LightningCLI whose config errors are ``ConfigError``s, and whose subcommands check paths before loading."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", ChordParser)
        kwargs.setdefault("parser_kwargs", {"prog": program_name(), "description": DESCRIPTION})
        self.command_args: list[str] | None = kwargs.get("args")  # None: the command line (sys.argv)
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate``: the module has no ``test_step`` or ``predict_step`` for the other two."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            RESUME_FLAG,
            type=bool,
            default=False,
            help="Resume from a checkpoint whose hyper-parameters differ from this command's (refused otherwise).",
        )
        # The one rollout callback, as a group of its own: ``--rollout.engine …`` and a ``rollout:`` overlay change
        # it alone, where a second ``trainer.callbacks`` list would replace every other callback.
        parser.add_lightning_class_args(RolloutCallback, ROLLOUT_GROUP)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        files = config_files(getattr(self.parser, "args", None) or [])  # none when parsed from a dict
        refuse_listed_rollout_callback(config.get("trainer.callbacks"), files)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as err:
            error = config_error(err, accelerator=self._get(self.config, "trainer.accelerator"))
            if error is None:
                raise
            raise error from err
        for logger in self.trainer.loggers:
            # Lightning calls wandb.init(anonymous=None), and wandb warns that the setting is deprecated, every run.
            if isinstance(logger, WandbLogger) and logger._wandb_init.get("anonymous", False) is None:
                del logger._wandb_init["anonymous"]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with the ``rollout`` group's callback first, where the configs used to list it: a callback
        that reads the step's rollouts in ``on_train_batch_start`` finds them (Lightning appends a group's)."""
        trainer = super().instantiate_trainer(**kwargs)
        callbacks: list = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
        rollout = next(c for c in callbacks if isinstance(c, RolloutCallback))
        callbacks.remove(rollout)
        callbacks.insert(0, rollout)
        return trainer

    def before_fit(self) -> None:
        """Check the paths, then give the run its folder and resolve ``--ckpt_path last`` (``lit_chord.runs``)."""
        self.check_before_run()
        ckpt_path = prepare_fit(
            self.trainer,
            self.model,
            self.datamodule,
            ckpt_path=self._get(self.config_init, "ckpt_path"),
            resume_anyway=bool(self._get(self.config_init, RESUME_FLAG.lstrip("-"))),
            args=self.command_args,
        )
        self.config_init[self.subcommand]["ckpt_path"] = ckpt_path

    def before_evaluating(self) -> None:
        """Check the paths; ``--ckpt_path last`` is the newest checkpoint of this config's runs."""
        self.check_before_run()
        if self._get(self.config_init, "ckpt_path") == "last":
            self.config_init[self.subcommand]["ckpt_path"] = str(last_checkpoint(self.trainer))

    # The datamodule's setup reads every source, and validation loads the model, as fit does.
    before_validate = before_evaluating

    def check_before_run(self) -> None:
        """Fail in seconds on a missing path or a model nobody can provide, before ``fit`` loads anything."""
        model, data = self.model.hparams, self.datamodule.hparams
        sources = {"data.prompt_data": data.get("prompt_data"), "data.expert_data": data.get("expert_data")}
        for name, source in val_set_sources(data.get("val_data")).items():
            sources["data.val_data" if isinstance(data.get("val_data"), str) else f"data.val_data.{name}"] = source
        sources = {key: source for key, source in sources.items() if source}
        files = {key: path for key, path in sources.items() if Path(path).suffix in DATA_SUFFIXES}
        ckpt_path = self._get(self.config_init, "ckpt_path")
        if isinstance(ckpt_path, str) and not _resolved_by_lightning(ckpt_path):
            files["ckpt_path"] = ckpt_path
        pretrained = {
            "model.model": (model.get("model"), ("config.json",)),
            "data.tokenizer": (data.get("tokenizer"), ("tokenizer_config.json", "tokenizer.json")),
        }
        check_paths({key: spec for key, spec in pretrained.items() if spec[0]}, files)
        check_datasets({key: source for key, source in sources.items() if key not in files})


def _resolved_by_lightning(ckpt_path: str) -> bool:
    return ckpt_path in CKPT_KEYWORDS or ckpt_path.startswith("registry") or "://" in ckpt_path


def config_error(err: Exception, accelerator: object) -> ConfigError | None:
    """The ``ConfigError`` an error raised while building the config's classes stands for, or None: a bug."""
    message = str(err)
    if isinstance(err, MisconfigurationException):
        if "No supported gpu backend" in message or "the accelerator is not available" in message:
            return ConfigError(
                f"this config asks for accelerator {accelerator}, which this machine does not have ({message})",
                hint="on this machine use `--trainer.accelerator cpu` or `configs/demo.yaml`",
            )
        return ConfigError(message)
    frames = traceback.extract_tb(err.__traceback__)
    raised_in = Path(frames[-1].filename) if frames else None
    if isinstance(err, ValueError) and raised_in and any(raised_in.is_relative_to(p) for p in CHECKING_PACKAGES):
        return ConfigError(message)
    if isinstance(err, ValueError) and (ours := OUR_CHECK_IN_A_UNION.search(message)):
        return ConfigError(ours.group(1))  # our check, which jsonargparse tried on each type of ``Objective | None``
    return None


def check_paths(pretrained: dict[str, tuple[str, tuple[str, ...]]], files: dict[str, str]) -> None:
    """Raise a ``ConfigError`` for the first missing local path, else for a hub name that cannot be had.

    Args:
        pretrained: Config key -> (local folder or hub name for ``from_pretrained``, files of which such a folder
            or repo has at least one).
        files: Config key -> a local file that must exist.
    """
    cwd = Path.cwd()
    missing = {key: name for key, (name, _) in pretrained.items() if not Path(name).is_dir() and not is_repo_id(name)}
    missing |= {key: path for key, path in files.items() if not Path(path).exists()}
    if missing:
        (key, path), *others = missing.items()
        where = "" if Path(path).is_absolute() else f" (relative paths are resolved from the working directory, {cwd})"
        also = f"; also missing: {', '.join(other for other, _ in others)}" if others else ""
        raise ConfigError(
            f"{key}: {path!r} not found{where}{also}",
            hint=preparation_hint(path)
            or "run from the folder the config's paths are relative to, or pass absolute paths",
        )
    for key, (name, filenames) in pretrained.items():
        problem = pretrained_problem(name, filenames)
        if problem is not None:
            raise ConfigError(f"{key}: {problem}")


def check_datasets(sources: dict[str, str]) -> None:
    """Raise a ``ConfigError`` for the first data source that is neither a local folder nor a ``datasets`` hub name
    (``name`` or ``name:split``, as ``lit_chord.records`` reads them) that the cache or the hub can provide now.

    Args:
        sources: Config key -> a data source without a data file's suffix.
    """
    for key, source in sources.items():
        name = source.partition(":")[0]
        if Path(source).exists():
            continue
        if not is_repo_id(name):
            raise ConfigError(
                f"{key}: {source!r} not found (relative paths are resolved from the working directory, {Path.cwd()}) "
                "and not a datasets hub name"
            )
        problem = dataset_problem(name)
        if problem is not None:
            raise ConfigError(f"{key}: {problem}", hint="pass a local .jsonl, .json or .parquet file instead")


# ----- the boundary -----------------------------------------------------------------------------------------------
def command_line(run: Callable[[], object]) -> int:
    """Call ``run``; a user error ends in one line on stderr (plus a hint) and exit code 2, a bug in its traceback.

    Returns:
        The exit code: 0, or 2 after a user error.
    """
    try:
        run()
    except Exception as err:
        explained = user_message(err)
        if explained is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message, hint = explained
        print(f"error: {message}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 2
    return 0


def user_message(err: BaseException) -> tuple[str, str | None] | None:
    """(message, hint) for an error the user caused, None for a bug."""
    if isinstance(err, UserError):
        return str(err), err.hint
    # What the checks before fit cannot see: a cached repo without a file that is needed, a download that fails.
    if isinstance(err, (OSError, HFValidationError)) and _raised_in(err, "from_pretrained"):
        hint = f"model.model and data.tokenizer take a local folder (relative to {Path.cwd()}) or a hub name"
        return _first_line(err), hint
    return None


def _raised_in(err: BaseException, function: str) -> bool:
    return any(frame.f_code.co_name == function for frame, _ in traceback.walk_tb(err.__traceback__))


def _first_line(err: BaseException) -> str:
    return str(err).strip().split("\n", 1)[0]
