"""Where a run's files live, which run ``--ckpt_path last`` continues, and what a stop (Ctrl-C, SIGTERM) saves.

Why: every run of a config used to share one checkpoint folder, so files piled up as ``last-v1.ckpt … last-v9.ckpt``
and ``--ckpt_path last`` resumed whichever was newest, another (finished) run's included; in an empty folder Lightning
only warned and trained from step 0. Ctrl-C and SIGTERM saved nothing. Now:

- **One folder per run**, ``<root>/version_N`` (the next free one, made with ``mkdir``): logs, ``config.yaml``,
  ``checkpoints/``, samples, export. ``root`` is where the first logger keeps its versions (a ``CSVLogger``'s
  ``save_dir/name``), else ``trainer.default_root_dir``, which is pointed at the run too (Lightning's SLURM saves and
  loads ``hpc_ckpt_K.ckpt`` there: in a shared folder, another run's).
- **``--ckpt_path last``** continues the run whose newest checkpoint is the newest, from that file, in its folder
  (``metrics.csv`` keeps the rows up to the checkpoint's step), and refuses other hyper-parameters unless
  ``--resume_anyway true``. An explicit ``--ckpt_path FILE`` starts a new run folder from it.
- **A stop saves** (``lit_chord.interrupt``): Ctrl-C and SIGTERM finish the step, save it in the run's folder and
  print the command that resumes; the requeued SLURM job (``SLURM_RESTART_COUNT`` > 0) continues its run.
- **A run that fails before writing anything** (bad data at setup, a model that does not load) leaves no empty
  ``version_N``: the folder is made at the start, to reserve its number against a run started in the same moment,
  and removed again when the run fails with nothing in it but its ``config.yaml`` (``EmptyRunRemoval``).
- **The step's counts are split over the ranks** (``ChordDataModule.split_over_ranks``) before the folder is made,
  in this one process (Lightning starts the other ranks inside ``fit``): a count that cannot be split is one line.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shlex
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lit_chord.batch import check_mini_batches
from lit_chord.datamodule import ChordDataModule
from lit_chord.errors import UserError
from lit_chord.interrupt import InterruptCheckpoint, say, shown
from lit_chord.module import ChordModule

RESUME_FLAG = "--resume_anyway"
VERSION = re.compile(r"version_(\d+)")
# Hyper-parameters a resumed run may change: they change memory, speed or a guard, not what the steps compute.
MAY_DIFFER = frozenset(
    {
        "model.micro_batch_size",
        "model.max_tokens_per_micro_batch",
        "model.logprob_chunk_size",
        "model.gradient_checkpointing",
        "model.max_consecutive_skips",
        "data.val_size",
        "data.val_batch_size",
    }
)

# A checkpoint loaded by another run than the one that wrote it (``validate --ckpt_path``, a new run from an explicit
# file) makes Lightning warn that its ModelCheckpoint's "dirpath has changed": by design here, each run its folder.
warnings.filterwarnings("ignore", message="The dirpath has changed from")


# ----- where runs live --------------------------------------------------------------------------------------------
def runs_root(trainer: Trainer) -> Path:
    """The folder that holds this config's runs (``version_0``, ``version_1``, ...)."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return Path(logger.root_dir)
    return Path(trainer.default_root_dir)


def pinned_version(trainer: Trainer) -> int | str | None:
    """The version the config gives its first logger (e.g. ``version: ""``: log into ``root`` itself), if any."""
    logger = trainer.loggers[0] if trainer.loggers else None
    return getattr(logger, "_version", None) if isinstance(logger, (CSVLogger, TensorBoardLogger)) else None


def run_dir(root: Path, version: int | str) -> Path:
    return root / (version if isinstance(version, str) else f"version_{version}")


def new_version(root: Path) -> int:
    """The next free ``version_N`` under ``root``; rank 0 creates it, so that no other run can take it."""
    taken = [int(m.group(1)) for d in root.glob("version_*") if (m := VERSION.fullmatch(d.name)) and d.is_dir()]
    version = max(taken, default=-1) + 1
    while global_rank() == 0:
        try:
            run_dir(root, version).mkdir(parents=True)
            break
        except FileExistsError:  # another run started in the same moment
            version += 1
    return version


def checkpoint_files(trainer: Trainer, root: Path, pinned: int | str | None) -> list[Path]:
    """Every checkpoint of this config's runs, and of any ``ModelCheckpoint`` whose ``dirpath`` the config sets."""
    runs = [run_dir(root, pinned)] if pinned is not None else [d for d in root.glob("version_*") if d.is_dir()]
    files = [f for run in runs for f in (*run.glob("checkpoints/*.ckpt"), *run.glob("hpc_ckpt_*.ckpt"))]
    explicit = [
        Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath
    ]
    return sorted({*files, *(f for d in explicit for f in d.glob("*.ckpt"))})


def newest(files: list[Path]) -> Path | None:
    return max(files, key=lambda f: (f.stat().st_mtime_ns, f.name), default=None)


def owner(checkpoint_path: Path, checkpoint: dict, root: Path) -> int | str | None:
    """The version of the run under ``root`` that wrote the checkpoint, or None: it lies in no run's folder."""
    folder = checkpoint_path.parent
    if folder.name == "checkpoints":
        folder = folder.parent
    elif not checkpoint_path.name.startswith("hpc_ckpt_"):  # a ModelCheckpoint with its own dirpath
        folder = Path(checkpoint.get("run", {}).get("dir") or folder)
    if folder.resolve() == root.resolve():
        return ""
    if folder.parent.resolve() != root.resolve():
        return None
    match = VERSION.fullmatch(folder.name)
    return int(match.group(1)) if match else folder.name


# ----- what a resume loads ----------------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> dict:
    """The checkpoint's non-tensor contents, cheaply: tensors stay memory-mapped (a sharded one: its ``meta.pt``)."""
    file = path / "meta.pt" if path.is_dir() else path
    if not file.is_file():
        return {}
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=False)
    except RuntimeError:  # a file in torch's legacy format cannot be memory-mapped
        return torch.load(file, map_location="cpu", weights_only=False)


def hparams_differences(checkpoint: dict, model: LightningModule, datamodule: LightningDataModule) -> list[str]:
    """``key: checkpoint value -> this command's value`` for each hyper-parameter that differs and may not."""
    pairs = [
        ("model", checkpoint.get("hyper_parameters", {}), model.hparams),
        ("data", checkpoint.get("datamodule_hyper_parameters", {}), datamodule.hparams),
    ]
    changed = []
    for prefix, saved, now in pairs:
        saved, now = flat(dict(saved), prefix), flat(dict(now), prefix)
        for name in sorted({*saved, *now} - {k for k in {*saved, *now} if k.rpartition(".")[2].startswith("_")}):
            before, after = saved.get(name), now.get(name)
            if name not in MAY_DIFFER and not same(before, after):
                changed.append(f"{name}: {before!r} -> {after!r}")
    return changed


def flat(tree: dict, prefix: str) -> dict[str, Any]:
    """``tree``'s leaves under dotted keys (``model.objective.init_args.mu_peak``): a nested setting that changed is
    named, not its whole group."""
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves |= flat(value, f"{prefix}.{key}")
        else:
            leaves[f"{prefix}.{key}"] = value
    return leaves


def same(a: Any, b: Any) -> bool:
    """Equal values; two spellings of one existing path count as equal."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return False


def resume_command(args: list[str] | None) -> str:
    """The command the user ran, with ``--ckpt_path last`` (added, or replacing theirs)."""
    if args is None:
        argv = list(sys.orig_argv)
        prefix = argv[: len(argv) - len(sys.argv) + 1] if "-m" in argv else [sys.argv[0]]
        args = sys.argv[1:]
    else:
        prefix = ["python", "-m", "lit_chord"]
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        else:
            kept.append(arg)
    return shlex.join([*prefix, *kept, "--ckpt_path", "last"])


def continue_csv(logger: CSVLogger, through_step: int) -> None:
    """Keep the rows of ``metrics.csv`` up to ``through_step``: the resumed run logs the later steps again.

    Lightning's CSV writer deletes the file of a folder it opens; the kept rows are written back at once.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    rows = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if float(r.get("step") or math.inf) <= through_step]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment
    writer.metrics = [{k: v for k, v in row.items() if v != ""} for row in rows]
    writer.save()


# ----- setting a fit up -------------------------------------------------------------------------------------------
def prepare_fit(
    trainer: Trainer,
    model: LightningModule,
    datamodule: LightningDataModule,
    ckpt_path: str | None,
    resume_anyway: bool,
    args: list[str] | None,
) -> str | None:
    """Split the step's counts over the ranks, give the run its folder, find what ``last`` means, check the
    checkpoint; return the path ``fit`` loads."""
    if isinstance(datamodule, ChordDataModule):
        datamodule.split_over_ranks(trainer.world_size)
        if isinstance(model, ChordModule):
            check_mini_batches(model.hp.ppo_mini_batches, datamodule.prompts_per_step // trainer.world_size)
    root, pinned = runs_root(trainer), pinned_version(trainer)
    requeued = ckpt_path is None and SLURMEnvironment.detect() and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    last = ckpt_path == "last" or requeued
    if last:
        try:
            ckpt_path = str(last_checkpoint(trainer))
        except UserError:
            if not requeued:
                raise
            say(f"requeued job: no checkpoint under {shown(root)}; starting a fresh run")
    path = Path(ckpt_path) if ckpt_path and Path(ckpt_path).exists() else None  # None also for Lightning's keywords
    checkpoint = read_checkpoint(path) if path is not None else {}
    if path is not None and checkpoint:
        check_resumable(checkpoint, path, trainer, model, datamodule, resume_anyway)
    owner_version = owner(path, checkpoint, root) if path is not None else None
    version = pinned
    if version is None and last and owner_version is not None:
        version = owner_version  # ``last`` continues its run; an explicit file starts a new one from it
    if version is None:
        version = new_version(root)
        trainer.callbacks.append(EmptyRunRemoval(run_dir(root, version)))  # type: ignore[attr-defined]  # as below
    folder = run_dir(root, version)
    use_folder(trainer, folder, version)
    if path is not None:
        step = int(checkpoint.get("global_step", 0))
        continuing = owner_version is not None and run_dir(root, owner_version) == folder
        say(f"resuming {shown(folder) if continuing else 'new run ' + shown(folder)} from {shown(path)} at step {step}")
        if continuing:
            continue_logging(trainer, checkpoint, step)
    # First among the callbacks, so that it stops the run before the next step's generation. (Lightning sets
    # ``Trainer.callbacks`` from its callback connector; mypy cannot see it.)
    trainer.callbacks.insert(0, InterruptCheckpoint(folder, resume_command(args)))  # type: ignore[attr-defined]
    return ckpt_path


class EmptyRunRemoval(Callback):
    """Removes a fresh run's folder (made at the start, to reserve its number) when the run fails before writing more
    than the ``config.yaml`` LightningCLI saves at setup (a bad LoRA setting fails later, in ``configure_model``).

    Args:
        folder: The run's folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Lightning finalizes its loggers after this hook; a CSVLogger without rows writes nothing then.
        if global_rank() == 0 and self.folder.is_dir() and {p.name for p in self.folder.iterdir()} <= {"config.yaml"}:
            shutil.rmtree(self.folder)


def last_checkpoint(trainer: Trainer) -> Path:
    """What ``--ckpt_path last`` loads: the newest checkpoint of this config's runs."""
    root = runs_root(trainer)
    found = newest(checkpoint_files(trainer, root, pinned_version(trainer)))
    if found is None:
        raise UserError(f"--ckpt_path last: no run in {shown(root)} has a checkpoint", hint=no_run_hint(root))
    return found


def check_resumable(
    checkpoint: dict,
    path: Path,
    trainer: Trainer,
    model: LightningModule,
    datamodule: LightningDataModule,
    resume_anyway: bool,
) -> None:
    step = int(checkpoint.get("global_step", 0))
    if 0 < trainer.max_steps <= step:
        raise UserError(
            f"{shown(path)} is at step {step}, and trainer.max_steps is {trainer.max_steps}: nothing left to train",
            hint="start a fresh run without --ckpt_path, or raise --trainer.max_steps to train this run further",
        )
    changed = hparams_differences(checkpoint, model, datamodule)
    if changed and not resume_anyway:
        raise UserError(
            f"{shown(path)} was trained with other hyper-parameters (checkpoint -> this command): {'; '.join(changed)}",
            hint=f"resume with the checkpoint's values, start a fresh run without --ckpt_path, or pass "
            f"`{RESUME_FLAG} true` to go on with this command's values",
        )
    if changed:
        say(f"{RESUME_FLAG}: resuming with changed hyper-parameters: {'; '.join(changed)}")


def use_folder(trainer: Trainer, folder: Path, version: int | str) -> None:
    """Point the first logger, every ``ModelCheckpoint`` without a ``dirpath`` and SLURM's hpc saves at ``folder``."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        logger._version = version  # the constructor's ``version``; Lightning offers no setter
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = os.path.realpath(folder / "checkpoints")
    # Lightning writes hpc_ckpt_K.ckpt into default_root_dir and, under SLURM, loads the newest one found there into
    # any run started without a ckpt_path: in a shared folder, another run's.
    trainer._default_root_dir = str(folder)  # type: ignore[attr-defined]  # set by Lightning's callback connector


def continue_logging(trainer: Trainer, checkpoint: dict, step: int) -> None:
    """Log into the resumed run: its CSV rows up to ``step``, its wandb run (the id its checkpoint recorded)."""
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    logger = trainer.loggers[0] if trainer.loggers else None
    if isinstance(logger, CSVLogger) and global_rank() == 0:
        continue_csv(logger, step)
    ids = checkpoint.get("run", {}).get("wandb_ids", [])
    for wandb, run_id in zip([lg for lg in trainer.loggers if isinstance(lg, WandbLogger)], ids, strict=False):
        if run_id:  # the constructor's ``id``/``version``
            wandb._wandb_init.update(id=run_id, resume="allow")
            wandb._id = run_id


def no_run_hint(root: Path) -> str:
    old = [shown(f) for f in (*root.glob("checkpoints/*.ckpt"), *root.glob("hpc_ckpt_*.ckpt"))]
    if old:
        return f"checkpoints outside a run's folder are not searched; pass one as --ckpt_path FILE: {', '.join(old)}"
    return "start a fresh run without --ckpt_path (runs save a checkpoint every few steps and when stopped)"


def global_rank() -> int:
    """This process's rank, known before ``fit`` sets the ranks up (Lightning reads it from the environment)."""
    return getattr(rank_zero_only, "rank", 0)
