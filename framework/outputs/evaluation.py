"""Evaluation attached to a run: ``eval_curve.csv`` during training, ``metrics.json`` at the end.

Built from the run config's ``evaluators`` list, keeping those that apply to the run's prompt;
with none (a prompt without ground truth, or ``evaluators=[]``) the run writes neither file.

``eval_curve.csv`` columns: step, train_s (seconds spent in optimizer steps so far, from the
StepTimer: evaluation, checkpoint and image writes are not counted, so curves against time show
the method's cost), the evaluators' metrics, and loss (mean total loss over the steps since the
last row). A resumed run keeps the rows up to its checkpoint's step and writes the rest again
(the row of that step was written before its checkpoint: the callback runs first).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytorch_lightning as pl

from .. import registry
from ..atomic import write_text_atomic
from .timing import StepTimer

log = logging.getLogger(__name__)


def applicable_evaluators(names, prompt: str | None) -> list:
    """The evaluators named in ``names`` that have ground truth for ``prompt`` (the run's
    ``evaluate_as``; None: nothing to score)."""
    if prompt is None:
        return []
    chosen = [registry.find("evaluator", name)() for name in names]
    return [e for e in chosen if e.applies_to(prompt)]


class Evaluation(pl.Callback):
    def __init__(self, evaluators: list, prompt: str, run_dir: Path, every: int, timer: StepTimer | None):
        self.evaluators = evaluators
        self.prompt = prompt
        self.path = Path(run_dir) / "eval_curve.csv"
        self.run_dir = Path(run_dir)
        self.every = every
        self.timer = timer
        self.columns = ["step", "train_s", *(m for e in evaluators for m in e.metrics), "loss"]
        self._first_loss = 0  # index into timer.step_losses of the first step since the last row
        self.latest: dict = {}  # the last row's figures (the progress line shows them)

    @property
    def curve_on(self) -> bool:
        return bool(self.evaluators) and self.every > 0

    def measure(self, system) -> dict:
        metrics: dict = {}
        for evaluator in self.evaluators:
            metrics.update(evaluator.measure(system, self.prompt))
        return metrics

    def on_train_start(self, trainer, system) -> None:
        if not self.curve_on:
            return
        step = int(trainer.global_step)
        kept = []
        if self.path.is_file():  # a resumed run: keep what was measured up to its checkpoint
            with open(self.path, newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["step"]) <= step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(kept)
        if step == 0:
            self._write_row(system, 0)

    def state_dict(self) -> dict:
        """Saved in the checkpoint: where the losses of the next row begin (a resumed run's first
        row then averages the same steps as an uninterrupted run's)."""
        return {"first_loss": self._first_loss}

    def load_state_dict(self, state: dict) -> None:
        self._first_loss = int(state.get("first_loss", 0))

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        if not self.curve_on:
            return
        step = int(trainer.global_step)
        if step % self.every == 0 or step >= trainer.max_steps:
            self._write_row(system, step)

    def _write_row(self, system, step: int) -> None:
        metrics = self.measure(system)
        self.latest = {m: metrics[m] for e in self.evaluators for m in e.metrics if isinstance(metrics.get(m), float)}
        # the StepTimer (which runs before this callback) already holds every step's loss
        losses = self.timer.step_losses[self._first_loss:]
        self._first_loss = len(self.timer.step_losses)
        row = {"step": step, "train_s": round(sum(self.timer.step_seconds), 4),
               **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
               "loss": sum(losses) / len(losses) if losses else math.nan}
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerow(row)

    def finish(self, system) -> dict | None:
        """The final evaluation into ``metrics.json``; None when no evaluator applies."""
        if not self.evaluators:
            log.info("No evaluator has ground truth for the prompt %r: no metrics.json.", self.prompt)
            return None
        metrics: dict = {}
        for evaluator in self.evaluators:
            metrics.update(evaluator.write(system, self.prompt, self.run_dir))
        write_text_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        declared = [m for e in self.evaluators for m in e.metrics]
        log.info("Evaluation: %s", json.dumps({k: metrics[k] for k in declared if k in metrics}))
        return metrics
