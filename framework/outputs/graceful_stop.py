"""The Lightning callback that acts on a stop signal (``scorelift.stop_signals``) at the end of a step."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from ..stop_signals import StopSignals

log = logging.getLogger(__name__)


class GracefulStop(pl.Callback):
    """At the end of a step after a stop signal: write the checkpoint (through the run's
    ``CheckpointKeeper``) and end training; the step's metric rows reach the log when Lightning
    tears down. Written here, not when training ends: ending the epoch early would store the
    next epoch's number. Last in the callback list, so the step's own evaluation and images are
    done first."""

    def __init__(self, stop: StopSignals, keeper):
        self.stop, self.keeper = stop, keeper
        self.stopped_at: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop.install()  # replaces the SIGTERM handler Lightning composed when fit began
        if self.stop.requested:  # arrived while the run was being set up
            self._stop(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stop.requested and self.stopped_at is None:
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        self.keeper.save(trainer)
        self.stopped_at = int(trainer.global_step)
        trainer.should_stop = True
        log.warning("Stopped by %s after step %d; checkpoint written.", self.stop.name, self.stopped_at)
