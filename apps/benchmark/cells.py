"""A benchmark's cells as jobs of the one runner (``scorelift.jobs``): where each cell's folder
is, what state it is in, the order cells start in, and the line the driver prints for each.

    <out>/cells/<method>/<prompt-slug>/s<seed>/   a cell's job folder (``scorelift.jobs.folder``)

What only the benchmark adds: the slowest cells start first (``schedule``), the shapes world's
ground truth is rendered once before the cells start (``warm_evaluation_cache``), and a finished
cell's line gives its quality.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from scorelift.jobs import DEFAULT_STOP_GRACE_S, RunOutcome, finished_record, job_state, run_jobs, wall_time
from scorelift.jobs.runner import job_line
from .spec import Cell

__all__ = ["DEFAULT_STOP_GRACE_S", "RunOutcome", "cell_dir", "cell_line", "cell_state", "is_finished", "run_cells",
           "schedule"]


def cell_dir(out: Path, cell: Cell) -> Path:
    return cell.job.folder(out)


def is_finished(out: Path, cell: Cell) -> bool:
    record = finished_record(cell_dir(out, cell))
    return record is not None and record.get("fingerprint") == cell.fingerprint


def cell_state(out: Path, cell: Cell) -> str:
    """finished, stopped (to be resumed), failed, or not run."""
    return job_state(out, cell.job)


def cell_record(out: Path, cell: Cell) -> dict:
    """A finished cell's record (its processes, wall time), or {}."""
    return finished_record(cell_dir(out, cell)) or {}


def measured_costs(out: Path) -> dict[str, float]:
    """method -> median wall time (s) of its cells already finished under ``out``."""
    times: dict[str, list[float]] = {}
    for folder in (out / "cells").glob("*/*/*"):
        record = finished_record(folder)
        try:
            times.setdefault(record["method"], []).append(wall_time(record))
        except (TypeError, KeyError):
            continue
    return {method: statistics.median(ts) for method, ts in times.items() if None not in ts}


def schedule(cells: list[Cell], out: Path, relative_cost: dict[str, float]) -> list[Cell]:
    """``cells`` with the slowest started first (longest-processing-time order), so that a slow
    cell does not start last and run alone while the other workers idle; ties keep preset order.

    A method's cost is the median wall time of its cells finished in ``out`` (earlier seeds of a
    resumed run); a method not yet measured gets the preset's ``relative_cost`` (default 1) times
    the measured methods' median time per unit of hint, or the bare hint when nothing is measured.
    """
    measured = measured_costs(out)
    per_unit = [t / relative_cost.get(m, 1.0) for m, t in measured.items()]
    scale = statistics.median(per_unit) if per_unit else 1.0

    def cost(cell: Cell) -> float:
        return measured.get(cell.method, relative_cost.get(cell.method, 1.0) * scale)

    return sorted(cells, key=cost, reverse=True)  # sorted() is stable


def warm_evaluation_cache(prompts: list[str]) -> None:
    """Render the shapes world's ground truth once, here, so that concurrent cells only read the
    cache file instead of all rendering (and writing) it at once."""
    from scorelift.shapes_world.evaluate import parse_target

    if any(parse_target(p) for p in prompts):
        from scorelift.shapes_world.evaluate import evaluation_truth

        evaluation_truth()


def cell_line(out: Path, job, record: dict, done: int, total: int) -> str:
    """The driver's line for a cell whose process has ended: its quality, or why it stopped or failed."""
    if record["status"] != "ok":
        return job_line(out, job, record, done, total)
    try:
        metrics = json.loads((job.folder(out) / "run" / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    result = f"IoU {metrics['iou']:.3f} id {metrics['identification']:.2f} " if "iou" in metrics else ""
    parts = f" in {record['resumed'] + 1} segments" if record["resumed"] else ""
    return f"[{done}/{total}] {job.label}: {result}({wall_time(record):.0f} s{parts})"


def run_cells(out: Path, cells: list[Cell], workers: int, threads_per_run: int | None = None, mps: bool = False,
              log=print, relative_cost: dict[str, float] | None = None,
              stop_grace_s: float = DEFAULT_STOP_GRACE_S, gpus: list[int] | None = None, slurm=None,
              retry_failed: bool = False) -> RunOutcome:
    """Run every unfinished cell through ``scorelift.jobs.run_jobs``, slowest first (``schedule``);
    the other arguments are ``run_jobs``'s."""
    ordered = schedule(cells, out, relative_cost or {})
    prompt_of = {c.job.key: c.prompt for c in cells}
    return run_jobs(out, [c.job for c in ordered], workers, threads_per_run=threads_per_run, mps=mps, log=log,
                    stop_grace_s=stop_grace_s, gpus=gpus, slurm=slurm, retry_failed=retry_failed,
                    retry_hint="--retry-failed runs them",
                    before_start=lambda todo: warm_evaluation_cache(sorted({prompt_of[j.key] for j in todo})),
                    describe=lambda job, record, done, total: cell_line(out, job, record, done, total))
