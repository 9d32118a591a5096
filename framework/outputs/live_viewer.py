"""The viewer while a run trains (``viewer=true``): a Lightning callback around
``scorelift.viewer.LiveView``. Between steps it updates the step and loss shown, renders a frame
for a client whose camera moved (and for every client every ``viewer.refresh_every`` steps, so the
object is seen to change), and holds training while the pause box is ticked."""

from __future__ import annotations

import math

import pytorch_lightning as pl

from ..viewer import ViewerConfig, start_view


class LiveViewer(pl.Callback):
    def __init__(self, cfg: ViewerConfig, title: str, stop=None):
        self.cfg = cfg
        self.title = title
        self.stop = stop  # StopSignals: a stop request ends a pause
        self.view = None

    def on_train_start(self, trainer, system) -> None:
        self.view = start_view(self.cfg, self.title)
        self.view.set_status(int(trainer.global_step), None)

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step % self.cfg.status_every == 0:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            self.view.set_status(step, float(loss) if loss is not None else math.nan)
        if self.view.has_clients():
            self.view.serve(system, everyone=step % self.cfg.refresh_every == 0)
        self.view.wait_while_paused(system, self.stop)

    def teardown(self, trainer, system, stage) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None
