"""The run's metric logs, kept across resumes: ``logs/metrics.csv`` and ``tensorboard/``.

Lightning's CSVLogger deletes an existing metrics.csv when a new logger starts in its folder, so
a resumed run used to lose the rows of its earlier part. Here a resume at step ``k`` keeps every
row of the steps before ``k`` and appends the rest: rows of steps at or after ``k`` (logged
after the checkpoint it resumes from, by a process that was then killed) are dropped, because
those steps are trained again. The file then reads as if the run had never stopped.
TensorBoard gets the same through SummaryWriter's ``purge_step``: events at or after ``k`` in
the earlier event files are hidden.

What a SIGKILL can lose is bounded by the checkpoint cadence: ``CheckpointKeeper`` flushes the
loggers with every checkpoint, and sets ``flush_next`` so that the checkpoint step's own row,
which Lightning logs just after the checkpoint callback, is written at once too. (A kill in the
instant between the two loses that one row.)
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from ..atomic import write_text_atomic

METRICS_FILE = "metrics.csv"


def keep_rows_before(path: Path, step: int) -> list[str]:
    """Rewrite the CSV at ``path`` (atomically) with only its rows whose ``step`` is below
    ``step``; returns its header (the columns logged so far), or [] if there is no such file."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if _step_of(row) < step]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
    return header


def _step_of(row: dict) -> float:
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return float("inf")


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, minus the deletion of an existing metrics.csv: the
    file is kept (trimmed to the steps before the resume step by ``ResumableCSVLogger``) and new
    rows are appended under its header (Lightning rewrites the header when new columns appear)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = list(csv.DictReader(fh).fieldnames or [])


assert hasattr(_ExperimentWriter, "_check_log_dir_exists"), "Lightning's CSV writer changed: see AppendingExperimentWriter"


class ResumableCSVLogger(CSVLogger):
    """``<run>/logs/metrics.csv``, continued (not replaced) by a run resumed at ``resume_step``."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        super().__init__(save_dir=str(run_dir), name="", version="logs")
        self.flush_next = False  # set by CheckpointKeeper: write the next row at once
        if resume_step > 0:
            keep_rows_before(Path(self.log_dir) / METRICS_FILE, resume_step)

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(metrics, step)
        if self.flush_next:
            self.flush_next = False
            self.save()

    @property
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def tensorboard_logger(run_dir: Path, resume_step: int = 0) -> TensorBoardLogger:
    """``<run>/tensorboard/``; a resume hides the earlier files' events from ``resume_step`` on."""
    extra = {"purge_step": resume_step} if resume_step > 0 else {}
    return TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False, **extra)
