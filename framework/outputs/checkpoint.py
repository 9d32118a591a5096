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
import re
import shutil
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO

from ..atomic import temp_path
from ..errors import RunWriteError
from ..units import human_bytes

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
OLDER_PATTERN = re.compile(r"^step_(\d+)\.ckpt$")
TEMP_MARK = ".tmp-"  # in the name of every temporary file a run writes: .<name>.tmp-<pid>
# Errors that mean "the volume (or this process's file-size limit) has no room for the write".
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: Path) -> Path:
    """The newest checkpoint of a run: ``<run>/checkpoints/last.ckpt``."""
    return checkpoint_dir(run_dir) / LAST


def older_name(step: int) -> str:
    return f"step_{step:06d}.ckpt"


temp_name = temp_path  # .last.ckpt.tmp-<pid>


def no_space_error(exc: BaseException) -> OSError | None:
    """The OSError that says "no space" (ENOSPC, EDQUOT, or EFBIG from a file-size limit) behind
    ``exc``, if any. torch.save's zip writer reports a failed write as a RuntimeError whose
    context is the OSError, so the chain is searched."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash after it cannot bring the old name back)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


# ------------------------------------------------------------------------------ reading
def read_step(path: Path) -> int:
    """The global step stored in checkpoint ``path``; raises if the file is not a complete,
    intact checkpoint. torch.load does not check the zip's CRC-32 checksums (a garbled tensor
    would load as wrong numbers), so every member is checked first (~1 GB/s), then the state is
    read without loading its tensors (mmap)."""
    with zipfile.ZipFile(path) as archive:  # BadZipFile for a truncated or foreign file
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"its part {bad!r} fails its CRC-32 check (the file is garbled)")
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state or "global_step" not in state:
        raise ValueError("not a scorelift checkpoint (no state_dict / global_step)")
    return int(state["global_step"])


def older_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the ``step_*.ckpt`` files in ``folder``, newest first."""
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = OLDER_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint of a run, newest first: last.ckpt, then the older ones by step."""
    folder = checkpoint_dir(run_dir)
    last = folder / LAST
    return ([last] if last.is_file() else []) + [p for _, p in older_checkpoints(folder)]


def has_checkpoint(run_dir: Path) -> bool:
    return bool(candidates(run_dir))


def first_readable(paths: list[Path]) -> tuple[Path | None, int | None, list[tuple[Path, str]]]:
    """The first of ``paths`` that reads as a checkpoint, its step, and (path, why) of each one
    skipped before it."""
    skipped = []
    for path in paths:
        try:
            return path, read_step(path), skipped
        except Exception as exc:  # noqa: BLE001  (a damaged file of any kind: say why and go on)
            skipped.append((path, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"))
    return None, None, skipped


def newest_readable(run_dir: Path) -> Path | None:
    """The run's newest checkpoint that reads as one (last.ckpt, else the older ones by step), or None."""
    return first_readable(candidates(run_dir))[0]


# ------------------------------------------------------------------------------ housekeeping
def remove_dead_writers_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.tmp-<pid>``) of writers that died mid-write, in the
    run directory and its checkpoints/. Call only while holding the run directory's lock: then
    no live writer can own one. Returns what was removed."""
    removed = []
    for folder in (Path(run_dir), checkpoint_dir(run_dir)):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and path.name.startswith(".") and (TEMP_MARK in path.name or path.name.startswith(".scorelift-write-test-")):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def set_aside(paths: list[Path]) -> list[Path]:
    """Rename damaged checkpoints to ``<name>.damaged`` (kept for inspection, out of the rotation
    and of resume's way; a later damaged file of the same name replaces it)."""
    moved = []
    for path in paths:
        if path.is_file():
            target = path.with_name(path.name + ".damaged")
            os.replace(path, target)
            moved.append(target)
    return moved


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
