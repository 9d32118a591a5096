"""Shapes-world quality during training: ``eval_curve.csv`` with one row every ``trainer.eval_every`` steps.

Columns: step, train_s (seconds spent in optimizer steps so far, from the StepTimer: evaluation,
checkpoint and image writes are not counted, so curves against time show the method's cost),
iou, colour_error, identification, and loss (mean total loss over the steps since the last row).
The benchmark draws its quality-vs-step and quality-vs-time curves from this file.

Only prompts of the shapes world have ground truth; for any other prompt the callback does nothing.
A resumed run keeps the rows before its step and writes the rest again.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytorch_lightning as pl

from framework.outputs.final import render_evaluation_views
from framework.outputs.timing import StepTimer

COLUMNS = ("step", "train_s", "iou", "colour_error", "identification", "loss")


class QualityCurve(pl.Callback):
    def __init__(self, run_dir: Path, every: int, timer: StepTimer):
        self.path = Path(run_dir) / "eval_curve.csv"
        self.every = every
        self.timer = timer
        self.target: tuple[str, str] | None = None
        self._first_loss = 0  # index into timer.step_losses of the first step since the last row

    def on_train_start(self, trainer, system) -> None:
        from framework.shapes_world.world import parse_prompt

        self.target = parse_prompt(system.prompt) if self.every > 0 else None
        if self.target is None:
            return
        step = int(trainer.global_step)
        kept = []
        if self.path.is_file():  # a resumed run: keep what was measured before its checkpoint
            with open(self.path, newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["step"]) < step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        if step == 0:
            self._write(system, 0)

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        if self.target is None:
            return
        step = int(trainer.global_step)
        if step % self.every == 0 or step >= trainer.max_steps:
            self._write(system, step)

    def _write(self, system, step: int) -> None:
        from framework.shapes_world.evaluate import evaluate_views

        rgb, alpha = render_evaluation_views(system)
        m = evaluate_views(rgb, alpha, *self.target)
        # the StepTimer (which runs before this callback) already holds every step's loss
        losses = self.timer.step_losses[self._first_loss:]
        self._first_loss = len(self.timer.step_losses)
        loss = sum(losses) / len(losses) if losses else math.nan
        row = {
            "step": step,
            "train_s": round(sum(self.timer.step_seconds), 4),
            "iou": round(m["iou"], 6),
            "colour_error": round(m["colour_error"], 6),
            "identification": m["identification"],
            "loss": loss,
        }
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=COLUMNS).writerow(row)
