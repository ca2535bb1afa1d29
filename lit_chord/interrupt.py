"""What a stop saves: Ctrl-C, SIGTERM or SLURM's requeue signal finish the step, save it, and exit resumably.

Why: Ctrl-C used to print "attempting graceful shutdown", exit 1 and save nothing, with checkpoints only every 100
steps. ``InterruptCheckpoint`` turns the first SIGINT or SIGTERM into "finish the step, save it as the
ModelCheckpoint's ``last.ckpt`` (atomically, as every save), exit 128 + signal with the command that resumes".
Lightning resumes exactly from a checkpoint written at the end of a step (``on_train_batch_end``), not from one
written mid-step. SLURM's requeue signal (SIGUSR1) does the same and then ``scontrol requeue``s the job, instead of
Lightning's save from inside the signal handler (wherever in a step it lands; resumed from, it shifts the
validation schedule by a step). ``lit_chord.runs`` decides which run folder the saves go to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only


def shown(path: Path | str) -> str:
    """``path`` relative to the working directory where it lies below it (as the user would type it)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@rank_zero_only
def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Interrupted(SystemExit):
    """The run stopped on a signal after saving; the exit status is 128 + the signal's number, as a shell's."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)


class InterruptCheckpoint(Callback):
    """On the first SIGINT or SIGTERM (or SLURM's requeue signal): let the step finish, save it, and exit with the
    command that resumes (or requeue the job, which then resumes).

    The CLI puts it first among the callbacks, so that it stops the run before the next step's generation.

    Args:
        run_dir: The run's folder (recorded in each checkpoint).
        command: The command that resumes the run, printed at the stop.
    """

    def __init__(self, run_dir: Path, command: str) -> None:
        super().__init__()
        self.run_dir, self.command = run_dir, command
        self.signum: int | None = None
        self.requeue_signal: int | None = None
        self.saved: str | None = None
        self.trainer: Trainer | None = None
        self.previous: dict[int, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After Lightning registered its handlers, just before training: its SIGTERM handler stops at the end of a
        # step without saving, and its SLURM requeue handler saves wherever in a step the signal arrives.
        self.trainer = trainer
        environment = trainer._accelerator_connector.cluster_environment  # as Lightning's own signal handling
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            self.requeue_signal = environment.requeue_signal
        signals = [signal.SIGINT, signal.SIGTERM, *([self.requeue_signal] if self.requeue_signal else [])]
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self.request_stop) for signum in signals}

    def request_stop(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now, without saving
                self.restore_handlers()
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (Slurm signals the job and each of its steps): SIGKILL is what cannot wait
        self.signum = signum
        if self.trainer is not None and self.trainer.is_global_zero:  # os.write: a print() may be mid-write here
            step, name = self.trainer.global_step + 1, signal.Signals(signum).name
            then = ", then requeueing the job" if signum == self.requeue_signal else ""
            again = " (Ctrl-C again: stop now, unsaved)" if signum == signal.SIGINT else ""
            message = f"\n{name}: saving a checkpoint once step {step} completes{then}{again}\n"
            os.write(sys.stderr.fileno(), message.encode())

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False)  # any rank's signal
        if 0 < trainer.max_steps <= trainer.global_step:  # the last step: the final validation and export remain,
            self.restore_handlers()  # and a signal from here on stops the run at once
            if stop:
                say("that was the last step: the run ends normally")
            return
        if not stop:
            return
        requeue = trainer.strategy.reduce_boolean_decision(
            self.requeue_signal is not None and self.signum == self.requeue_signal, all=False
        )
        self.signum = self.requeue_signal if requeue else self.signum or signal.SIGTERM
        self.saved = save_last(trainer, self.run_dir)
        if requeue and trainer.is_global_zero:
            requeue_job()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Stop here (the step saved, logged and validated); else flush the CSV logs, so that a kill loses none of
        the rows a resume will not log again."""
        if self.saved is not None and self.signum is not None:
            then = (
                "the requeued job resumes from it"
                if self.signum == self.requeue_signal
                else f"resume with: {self.command}"
            )
            say(f"interrupted at step {trainer.global_step}; saved {shown(self.saved)}; {then}")
            raise Interrupted(self.signum)
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        ids = [lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        checkpoint["run"] = {"dir": os.path.realpath(self.run_dir), "wandb_ids": ids}

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.restore_handlers()

    def restore_handlers(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def requeue_job() -> None:
    """``scontrol requeue`` this job (or array task), as Lightning's SLURM handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:
        say(f"could not requeue SLURM job {job}: no scontrol on this machine")
        return
    say(f"requeued SLURM job {job}" if result.returncode == 0 else f"could not requeue {job}: {result.stderr.strip()}")


def save_last(trainer: Trainer, folder: Path) -> str:
    """Save the step just completed, on every rank (rank 0 writes); return the file."""
    checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last]
    callback = checkpoints[0] if checkpoints else None
    if callback is None:
        path = str(folder / "checkpoints" / "last.ckpt")
        trainer.save_checkpoint(path)
        return path
    # What ModelCheckpoint.on_exception does (Lightning 2.6): ``last.ckpt`` through the callback, so that its state
    # names the file (a resumed run overwrites it, no ``last-v1``) and it does not save this step a second time.
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    return callback.last_model_path
