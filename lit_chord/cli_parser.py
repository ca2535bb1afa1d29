"""The command line's argument parser: its name, no usage block, a typo answered with the key it missed, and the
rollout group's one rollout callback.

Why: jsonargparse answers ``--model.mu_peek 0.5`` with ``unrecognized arguments: --model.mu_peek 0.5`` under 100 lines
of usage, and the same typo in a YAML file with ``Subcommand 'fit' does not accept option 'model.mu_peek'``, naming
neither the file nor the key that was meant; ``--help`` calls the program ``__main__.py``. Here the error keeps its one
line and says where the key came from (the command line or the config file that holds it) and the nearest valid key
(``difflib`` over the parser's own keys), and the program is ``python -m lit_chord`` (or ``lit-chord``, the script).

The ``RolloutCallback`` is a group of its own (``rollout:``, ``--rollout.engine ...``), so that a flag or a layered
file changes it alone: a second ``trainer.callbacks`` list would replace every other callback. A config written
before, with the callback among ``trainer.callbacks``, is refused in one line naming the file.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from lit_chord.errors import ConfigError
from lit_chord.rollout_callback import RolloutCallback

ROLLOUT_GROUP = "rollout"  # the RolloutCallback's settings: ``rollout:`` in YAML, ``--rollout.*`` on the command line
# Keys that moved into the objective (``model.objective.init_args``) when algorithms became plugins
# (``lit_chord.objectives``): an old config or flag is told where its key lives now.
MOVED_TO_OBJECTIVE = {
    **{
        f"model.{key}": key
        for key in (
            "mu_warmup_steps",
            "mu_decay_steps",
            "mu_peak",
            "mu_valley",
            "clip_low",
            "clip_high",
            "clip_ratio_c",
            "rl_loss_agg",
            "sft_loss_agg",
            "entropy_coef",
            "kl_coef",
            "kl_estimator",
            "off_policy_gamma",
        )
    },
    "model.sft_weighting": "token_weighting",
}
OBJECTIVE_CLASS = "model.objective: {class_path: lit_chord.objectives.luffy.Luffy}"
UNRECOGNIZED = re.compile(r"unrecognized arguments: --([^\s=]+)")
NOT_ACCEPTED = re.compile(r"(?:Subcommand|Group) '([^']+)' does not accept option '([^']+)'")
NOT_AN_INIT_ARG = re.compile(
    r"Parser key \"([^\"]+)\".*?Problem with given class_path '([^']+)':\s*Option '([^']+)' is not accepted", re.DOTALL
)


def program_name() -> str | None:
    """``python -m lit_chord`` when started so (argv[0] is then the package's ``__main__.py``), else None: argparse's
    default, the script's name (``lit-chord``)."""
    started = Path(sys.argv[0])
    return "python -m lit_chord" if (started.parent.name, started.name) == ("lit_chord", "__main__.py") else None


class ChordParser(LightningArgumentParser):
    """Prints no usage above a parse error (an unknown key, a wrong type): 100 lines of options would bury the line
    that says what is wrong; ``--help`` still lists them. An unknown key gets where it came from and a suggestion."""

    def print_usage(self, file: Any = None) -> None:
        pass

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(explain_unknown_key(message, self), ex)


def explain_unknown_key(message: str, parser: LightningArgumentParser) -> str:
    """``message`` with the config file that holds an unknown key and the nearest valid key, or as it was."""
    if match := UNRECOGNIZED.match(message):
        key, where = match.group(1), "the command line"
    elif match := NOT_ACCEPTED.search(message):
        scope, key = match.groups()
        key = key if scope in subcommand_parsers(parser) else f"{scope}.{key}"
        where = config_file_with(key, config_files(getattr(parser, "args", None) or [])) or "the command line"
    elif match := NOT_AN_INIT_ARG.search(message):
        group, class_path, option = match.groups()
        return explain_unknown_init_arg(group, class_path, option, config_files(getattr(parser, "args", None) or []))
    else:
        return message
    if key in MOVED_TO_OBJECTIVE:
        return f"{key} (in {where}) moved to model.objective.init_args.{MOVED_TO_OBJECTIVE[key]} (lit_chord.objectives)"
    if key == "data.expert_traces_in_groups":
        return f"{key} (in {where}) is the LUFFY objective now: {OBJECTIVE_CLASS}"
    nearest = difflib.get_close_matches(key, parser_keys(parser), n=1)
    suggestion = f"; did you mean {nearest[0]}?" if nearest else ""
    return f"{key} (in {where}) is not an option{suggestion}"


def explain_unknown_init_arg(group: str, class_path: str, option: str, files: list[str]) -> str:
    """An unknown argument of a class chosen by ``class_path`` (``model.objective``): where it came from, the
    class, and its nearest argument (the class's ``__init__`` parameters, its bases' through ``**kwargs``)."""
    in_file = config_file_with(f"{group}.init_args.{option}", files) or config_file_with(f"{group}.{option}", files)
    module, _, name = class_path.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    accepted = sorted(
        parameter
        for base in (cls.__mro__ if isinstance(cls, type) else ())
        if "__init__" in vars(base)
        for parameter, spec in inspect.signature(vars(base)["__init__"]).parameters.items()
        if parameter != "self" and spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL)
    )
    nearest = difflib.get_close_matches(option, accepted, n=1)
    suggestion = f"; did you mean {group}.{nearest[0]}?" if nearest else ""
    return f"{group}.{option} (in {in_file or 'the command line'}) is not an option of {name}{suggestion}"


def subcommand_parsers(parser: LightningArgumentParser) -> dict[str, LightningArgumentParser]:
    action = getattr(parser, "_subcommands_action", None)
    return dict(action._name_parser_map) if action is not None else {}


def parser_keys(parser: LightningArgumentParser) -> list[str]:
    """Every ``--key`` the parser and its subcommands take, without the dashes (``model.mu_peak``)."""
    keys = {
        option[2:]
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--config", "--print_config")
    }
    for subparser in subcommand_parsers(parser).values():
        keys |= set(parser_keys(subparser))
    return sorted(keys)


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` files among command-line ``args``, in order."""
    files = [value for flag, value in zip(args, args[1:], strict=False) if flag in ("--config", "-c")]
    return files + [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]


def config_file_with(key: str, files: list[str]) -> str | None:
    """The last of ``files`` (the one that wins) whose YAML holds the dotted ``key``, or None."""
    for file in reversed(files):
        try:
            tree = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if holds(tree, key):
            return file
    return None


def holds(tree: Any, key: str) -> bool:
    """Whether the nested mapping ``tree`` has the dotted ``key`` (``model.mu_peek``), whatever its value."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return isinstance(tree, dict) and leaf in tree


def refuse_listed_rollout_callback(callbacks: list | None, files: list[str]) -> None:
    """Raise a ``ConfigError`` if ``trainer.callbacks`` (as parsed) holds a ``RolloutCallback``: the ``rollout`` group
    is the run's one, and Lightning refuses two (``files``: the ``--config`` files, to name the one that lists it)."""
    for callback in callbacks or []:
        class_path = str(callback.get("class_path", "")) if hasattr(callback, "get") else ""
        module, _, name = class_path.rpartition(".")
        cls = getattr(sys.modules.get(module), name, None)  # jsonargparse imported it to parse its init_args
        if isinstance(cls, type) and issubclass(cls, RolloutCallback):
            where = file_listing(name, files)
            raise ConfigError(
                f"{where + ': ' if where else ''}trainer.callbacks lists {name}, whose settings are the top-level "
                f"`{ROLLOUT_GROUP}:` group now",
                hint=f"move its init_args under `{ROLLOUT_GROUP}:` (YAML) or pass them as --{ROLLOUT_GROUP}.KEY VALUE",
            )


def file_listing(callback: str, files: list[str]) -> str | None:
    """The last of the config ``files`` whose ``trainer.callbacks`` has a ``class_path`` ending in ``callback``."""
    for file in reversed(files):
        tree = yaml.safe_load(Path(file).read_text())
        callbacks = ((tree or {}).get("trainer") or {}).get("callbacks") if isinstance(tree, dict) else None
        callbacks = [callbacks] if isinstance(callbacks, dict) else callbacks or []
        if any(isinstance(c, dict) and str(c.get("class_path", "")).endswith(callback) for c in callbacks):
            return file
    return None
