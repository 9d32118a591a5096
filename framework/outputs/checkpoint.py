"""Checkpoints that survive kills, full disks and damaged files.

Layout of ``<run>/checkpoints/``::

    last.ckpt            the newest checkpoint (what ``resume=<run>`` continues from)
    step_000040.ckpt     older ones, named by their global step: the last ``keep`` files in all
                         (``trainer.keep_checkpoints``, default 2: last.ckpt and one before it)

Every write goes to a temporary file (``.last.ckpt.tmp-<pid>``), is fsynced and renamed over
``last.ckpt``, so a kill at any moment leaves either the old or the new file, never half of one.
The previous ``last.ckpt`` keeps its place under its ``step_*.ckpt`` name (a hard link, made
before the rename, so there is a ``last.ckpt`` at every moment). A write that fails for
lack of space removes its temporary file and raises ``RunWriteError``: the previous checkpoint
is intact. Temporary files of writers that died (SIGKILL mid-write) are removed by the next run
that holds the directory's lock (``remove_dead_writers_files``).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO

from ..errors import RunWriteError
from ..units import human_bytes
# the layout, reading and housekeeping, which need no Lightning (the start-up checks use them)
from .checkpoint_files import (  # noqa: F401  (names this module has always had)
    CHECKPOINT_DIR,
    LAST,
    NO_SPACE_ERRNOS,
    OLDER_PATTERN,
    TEMP_MARK,
    candidates,
    checkpoint_dir,
    checkpoint_path,
    first_readable,
    fsync_dir,
    has_checkpoint,
    newest_readable,
    no_space_error,
    older_checkpoints,
    older_name,
    read_step,
    remove_dead_writers_files,
    set_aside,
    temp_name,
)

log = logging.getLogger(__name__)


class DirectCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O, writing straight into the file it is given and fsyncing it:
    no second in-memory copy of a large checkpoint, and no temporary file of its own (the
    caller, ``CheckpointKeeper``, writes to a temporary name and renames it)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with open(path, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # the loop and optimizer state are plain Python objects: a resume needs the full unpickler
        return torch.load(path, map_location=map_location or "cpu", weights_only=False)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ writing
class CheckpointKeeper(pl.Callback):
    """Saves ``last.ckpt`` every ``every_n_steps`` optimizer steps and when training ends, keeping
    the newest ``keep`` checkpoints, and flushes the trainer's loggers with every save, so that a
    SIGKILL loses at most the metric rows logged since the last checkpoint.

    Lightning hands a step's metrics to the loggers just after the batch-end callbacks, so the
    row of the checkpoint's own step is written by the logger's next ``log_metrics`` call (the
    loggers' ``flush_next``, see ``scorelift.outputs.logs``) rather than by the save itself.
    ``save(trainer)`` is also what a stop signal calls (``scorelift.stop_signals``).
    """

    def __init__(self, run_dir: str | Path, every_n_steps: int, keep: int = 2):
        self.folder = checkpoint_dir(Path(run_dir))
        self.path = self.folder / LAST
        self.every_n_steps = max(1, int(every_n_steps))
        self.keep = max(1, int(keep))
        self.saved_step: int | None = None  # the step of this process's last save

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def save(self, trainer) -> Path:
        """Write the trainer's state as last.ckpt (once per step), rotate, prune; RunWriteError
        (one paragraph) when the volume has no room, with the previous checkpoint intact."""
        step = int(trainer.global_step)
        for logger in trainer.loggers:
            logger.save()
            if hasattr(logger, "flush_next"):
                logger.flush_next = True  # the row of this step arrives right after this callback
        if self.saved_step == step and self.path.is_file():
            return self.path
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(self.path)
        try:
            # weights_only=False: the optimizer and loop state are needed to resume
            trainer.save_checkpoint(tmp, weights_only=False)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            full = no_space_error(exc)
            if full is None:
                raise
            raise self.no_space(step, full) from None
        self.rotate(step)
        os.replace(tmp, self.path)
        fsync_dir(self.folder)
        self.saved_step = step
        self.prune()
        return self.path

    def rotate(self, new_step: int) -> None:
        """Keep the current last.ckpt under its step name before the new one replaces it (not when
        it holds the same step: a finished run resumed to write its outputs saves that step again)."""
        if self.keep < 2 or not self.path.is_file():
            return
        step = self.saved_step
        if step is None:
            try:
                step = read_step(self.path)
            except Exception:  # noqa: BLE001  (a damaged last.ckpt is not worth keeping)
                return
        if step == new_step:
            return
        older = self.folder / older_name(step)
        try:
            # a hard link first, so that a kill between this and the rename of the new file still
            # leaves a last.ckpt (the old one) ...
            older.unlink(missing_ok=True)
            os.link(self.path, older)
        except OSError:  # ... where the filesystem has hard links; else a rename
            os.replace(self.path, older)

    def prune(self) -> None:
        for _, path in older_checkpoints(self.folder)[self.keep - 1:]:
            path.unlink(missing_ok=True)

    def no_space(self, step: int, exc: OSError) -> RunWriteError:
        previous = f"checkpoints/{LAST} (step {self.saved_step})" if self.path.is_file() else None
        size = self.path.stat().st_size if self.path.is_file() else None
        free = shutil.disk_usage(self.folder).free
        why = "the file-size limit of this process (ulimit -f)" if exc.errno == errno.EFBIG else "no space left on the device"
        need = f"about {human_bytes(size)} (the size of the previous checkpoint)" if size else "room for one checkpoint"
        intact = (f"The previous checkpoint {previous} is intact: free space and resume with "
                  f"`scorelift resume={self.folder.parent}`.") if previous else "No checkpoint was written yet."
        return RunWriteError(
            f"Writing the checkpoint of step {step} to {str(self.folder)!r} failed: {why} ({human_bytes(free)} free). "
            f"It needs {need}; the partial file was removed. {intact}"
        )
