"""Running a benchmark's cells: every unfinished cell, slowest first, on this machine through
submitit's local executor (``local_cells``) or on a SLURM cluster as job arrays (``slurm_cells``).
What one cell's process is and how its folder is read is ``runner``'s."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import processes
from .local_cells import detect_gpus, run_local
from .runner import (
    DEFAULT_STOP_GRACE_S,
    GpuSampler,
    MpsDaemon,
    cells_to_run,
    is_finished,
    resumable_segments,
    schedule,
    wait_for_earlier_processes,
    warm_evaluation_cache,
)
from .slurm_cells import held_by_live_jobs, run_slurm
from .spec import Cell


@dataclass
class RunOutcome:
    """What ``run_cells`` did: the records of the cells run now (``settle``), the MPS status, and
    the signal that stopped the runner (None: it was not stopped)."""

    records: list[dict] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    threads_per_run: int = 1
    mps: str = "off"
    stopped_by: str | None = None
    not_started: int = 0

    @property
    def stopped(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "stopped"]


def run_cells(out: Path, cells: list[Cell], workers: int, threads_per_run: int | None = None, mps: bool = False,
              log=print, relative_cost: dict[str, float] | None = None,
              stop_grace_s: float = DEFAULT_STOP_GRACE_S, gpus: list[int] | None = None, slurm=None,
              retry_failed: bool = False) -> RunOutcome:
    """Run every unfinished cell on this machine through submitit's local executor
    (``local_cells``): ``workers`` cells at once on each GPU of ``gpus`` (default: every GPU
    this process sees), or ``workers`` at once on the CPU where there is none; slowest first (see
    ``schedule``); stopped cells resume (``resumable_segments``); cells that failed earlier run
    again only with ``retry_failed``. SIGTERM, SIGINT or SIGUSR1 to
    this process stops the cells; the outcome's ``stopped_by`` then names the signal.
    ``threads_per_run`` defaults to the CPU count over the number of cells run at once.
    With ``slurm`` (``slurm_cells.SlurmOptions``) the cells go to a SLURM cluster as job arrays
    instead (``slurm_cells.run_slurm``)."""
    if slurm is not None:
        return run_cells_on_slurm(out, cells, slurm, threads_per_run, log, relative_cost, stop_grace_s, retry_failed)
    gpus = detect_gpus() if gpus is None else list(gpus)
    at_once = max(1, workers) * max(1, len(gpus))
    threads = threads_per_run or max(1, (os.cpu_count() or 1) // at_once)
    unfinished = schedule(cells_to_run(out, cells, retry_failed, log), out, relative_cost or {})
    outcome = RunOutcome(gpus=gpus, threads_per_run=threads)
    with processes.StopRequests() as stop:
        todo = wait_for_earlier_processes(out, unfinished, stop_grace_s, stop, log)
        resuming = sum(resumable_segments(out, c) is not None for c in todo)
        also = f" ({resuming} stopped earlier: resumed)" if resuming else ""
        where = f"on {len(gpus)} GPU(s) ({', '.join(map(str, gpus))}), {workers} per GPU" if gpus else "on the CPU"
        log(f"{sum(is_finished(out, c) for c in cells)} of {len(cells)} cells already finished; running {len(todo)}{also} "
            f"with {workers} worker(s) {where}.")
        if todo:
            if not stop.requested:
                warm_evaluation_cache(sorted({c.prompt for c in todo}))
            env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
            with MpsDaemon(mps and not stop.requested, log) as daemon, GpuSampler(out / "gpu_util.csv"):
                env.update(daemon.env)
                outcome.records, outcome.not_started = run_local(out, todo, gpus, workers, env, stop, stop_grace_s, log)
                outcome.mps = daemon.status
        outcome.stopped_by = stop.name
    return outcome


def run_cells_on_slurm(out: Path, cells: list[Cell], slurm, threads_per_run: int | None, log,
                       relative_cost: dict[str, float] | None, stop_grace_s: float, retry_failed: bool) -> RunOutcome:
    """``run_cells`` on a SLURM cluster: every unfinished cell, slowest first, as job arrays."""
    threads = threads_per_run or slurm.cpus_per_job
    unfinished = schedule(cells_to_run(out, cells, retry_failed, log), out, relative_cost or {})
    outcome = RunOutcome(threads_per_run=threads, mps="off (SLURM)")
    held = held_by_live_jobs(out)  # cells an earlier, detached run's jobs still hold: waited for, not resubmitted
    attached = [c for c in unfinished if c.key in held]
    with processes.StopRequests() as stop:
        todo = wait_for_earlier_processes(out, [c for c in unfinished if c.key not in held], stop_grace_s, stop, log)
        resuming = sum(resumable_segments(out, c) is not None for c in todo)
        also = f" ({resuming} stopped earlier: resumed)" if resuming else ""
        log(f"{sum(is_finished(out, c) for c in cells)} of {len(cells)} cells already finished; running {len(todo)}{also} on SLURM.")
        if (todo or attached) and not stop.requested:
            warm_evaluation_cache(sorted({c.prompt for c in todo}))
            env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
            outcome.records, outcome.not_started = run_slurm(out, todo, slurm, env, stop, stop_grace_s, log,
                                                             attached=held, attached_cells=attached)
        outcome.stopped_by = stop.name
    return outcome
