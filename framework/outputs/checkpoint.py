"""Atomic checkpoints: a killed run never leaves a half-written last.ckpt."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl


def atomic_save(trainer: pl.Trainer, path: str | Path) -> None:
    """Write the trainer's checkpoint to a temporary file, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # weights_only=False: the optimizer and loop state are needed to resume (and saying so keeps
    # Lightning from logging that it defaulted to it on every save).
    trainer.save_checkpoint(tmp, weights_only=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpoint(pl.Callback):
    """Saves ``last.ckpt`` every ``every_n_steps`` optimizer steps and when training ends."""

    def __init__(self, path: str | Path, every_n_steps: int):
        self.path = Path(path)
        self.every_n_steps = max(1, int(every_n_steps))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            atomic_save(trainer, self.path)

    def on_train_end(self, trainer, pl_module) -> None:
        atomic_save(trainer, self.path)
