"""Running cells on a SLURM cluster: the grid as submitit job arrays on a shared filesystem.

Each array task is a ``CellTask`` of ``cells_per_job`` cells, run one after another on the
resources of one job (``gpus_per_job`` GPUs, ``cpus_per_job`` CPUs). The output folder must be on
a filesystem every node sees: the tasks write the cells' folders there, and the driver (this
process, on the login node) reads them. The driver waits with a progress line built from the
cells' own files and from ``squeue`` (never ``sacct``: the accounting database need not exist),
then returns the records the tasks returned.

Stopping and preemption are the task's (``cell_task``): ``scancel`` sends SIGTERM, the running
cell writes its checkpoint and the next invocation resumes it; the time-limit / preemption signal
submitit asks SLURM for (SIGUSR2, ``signal_delay_s`` ahead) requeues the task, which resumes its
cell. A stop signal to the driver does not cancel the jobs: they run on, and the same command,
run again, waits for the cells they hold (``jobs.json`` keeps every submission's job ids).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from scorelift.atomic import write_text_atomic
from . import processes
from .cell_task import CellTask
from .runner import cell_dir, cell_line, close_abandoned, is_finished, read_json
from .spec import Cell
from scorelift.errors import ConfigError
from scorelift.slurm_queue import live_jobs

JOBS_FILE = "slurm_jobs.json"
POLL_S = 2.0


@dataclass
class SlurmOptions:
    """What each job asks SLURM for, and how the grid is cut into jobs."""

    partition: str | None = None
    time_min: int = 60
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    cells_per_job: int = 1
    array_parallelism: int = 256
    signal_delay_s: int = 90
    max_requeues: int = 3
    sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch options, e.g. {"qos": "high"}

    def check(self) -> None:
        for name in ("time_min", "cpus_per_job", "cells_per_job", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--slurm {name.replace('_', '-')} {getattr(self, name)} must be at least 1.")
        if self.gpus_per_job < 0 or self.max_requeues < 0:
            raise ConfigError(f"--slurm gpus-per-job ({self.gpus_per_job}) and max-requeues ({self.max_requeues}) "
                              "must be 0 or more.")


def progress(out: Path, cells: list[Cell], live: dict[str, str]) -> str:
    done = sum(is_finished(out, c) for c in cells)
    failed = sum((cell_dir(out, c) / "failed.json").is_file() and not is_finished(out, c) for c in cells)
    running = sum(s.startswith("RUNNING") or s.startswith("COMPLETING") for s in live.values())
    queued = sum(s.startswith("PENDING") or s.startswith("REQUEUE") for s in live.values())
    return f"cells: {done} done, {failed} failed; jobs: {running} running, {queued} queued"


def held_by_live_jobs(out: Path) -> dict[str, str]:
    """Cell key -> SLURM task id ("12_3"), for the cells of earlier submissions (slurm_jobs.json)
    whose task squeue still lists: a driver stopped before them left them queued or running."""
    history = (read_json(out / JOBS_FILE) or {}).get("submissions", [])
    tasks = [(task, keys) for s in history for task, keys in zip(s.get("task_ids", []), s["tasks"])]
    live = live_jobs(sorted({task.split("_")[0] for task, _ in tasks}))
    return {key: task for task, keys in tasks if task in live for key in keys}


def run_slurm(out: Path, todo: list[Cell], opts: SlurmOptions, env: dict[str, str], stop: processes.StopRequests,
              grace_s: float, log=print, attached: dict[str, str] | None = None,
              attached_cells: list[Cell] = ()) -> tuple[list[dict], int]:
    """Submit ``todo`` as one job array, wait for it and for ``attached_cells`` (held by the
    earlier jobs ``attached``: cell key -> task id, not submitted again), return the records and 0
    (nothing is left unstarted: SLURM queues it all). A stop signal detaches: the jobs run on."""
    import submitit

    opts.check()
    attached = attached or {}
    jobs, groups, array_ids = [], [], sorted({task.split("_")[0] for task in attached.values()})
    if attached_cells:
        log(f"{len(attached_cells)} cell(s) are held by jobs of an earlier run that are still queued or running "
            f"({', '.join(sorted(set(attached.values())))}): waiting for them, not submitting them again.")
    if todo:
        executor = submitit.SlurmExecutor(folder=out / ".submitit" / "%j", max_num_timeout=opts.max_requeues)
        params = dict(time=opts.time_min, cpus_per_task=opts.cpus_per_job, array_parallelism=opts.array_parallelism,
                      signal_delay_s=opts.signal_delay_s, stderr_to_stdout=True, job_name="scorelift-bench",
                      additional_parameters=dict(opts.sbatch))
        if opts.partition:
            params["partition"] = opts.partition
        if opts.gpus_per_job:
            params["gpus_per_node"] = opts.gpus_per_job
        executor.update_parameters(**params)
        groups = [todo[i:i + opts.cells_per_job] for i in range(0, len(todo), opts.cells_per_job)]
        with executor.batch():
            jobs = [executor.submit(CellTask(out, group, env, grace_s)) for group in groups]
        submitted = sorted({j.job_id.split("_")[0] for j in jobs})
        record_submission(out, submitted, groups, [j.job_id for j in jobs])
        log(f"Submitted {len(todo)} cell(s) as {len(jobs)} array task(s) of job {', '.join(submitted)} "
            f"({opts.cells_per_job} cell(s) per task, at most {opts.array_parallelism} at once).")
        array_ids = sorted({*array_ids, *submitted})
    waited = [*todo, *attached_cells]
    last = None
    while not stop.requested:
        live = live_jobs(array_ids)
        line = progress(out, waited, live)
        if line != last:
            log(line)
            last = line
        if not live:
            break
        stop.wait(POLL_S)
    if stop.requested:
        log(f"Stopping ({stop.name}): the jobs of {', '.join(array_ids)} keep running on the cluster (scancel them to "
            "stop them); run the same command again to wait for them and write the report.")
        return [], 0
    records: list[dict] = []
    for job, group in zip(jobs, groups):
        try:
            got = list(job.result())
        except Exception as exc:  # noqa: BLE001  (no result: the job was cancelled, killed or failed)
            got = [close_abandoned(out, c, True, f"its job {job.job_id} ended without a result "
                                                 f"({type(exc).__name__}; job log {job.paths.stdout})")
                   for c in group if not is_finished(out, c)]
        records.extend(got)
    for cell in attached_cells:  # their records are in their folders (cell.json, or the segments)
        records.append(close_abandoned(out, cell, True, f"its earlier job {attached[cell.key]} ended without a result"))
    for i, record in enumerate(records, 1):
        cell = next(c for c in waited if c.fingerprint == record["fingerprint"])
        log(cell_line(out, cell, record, i, len(waited)))
    return records, 0


def record_submission(out: Path, array_ids: list[str], groups: list[list[Cell]], task_ids: list[str]) -> None:
    """Append this submission to slurm_jobs.json (history kept: every submission's array ids, and
    each task's id and cells)."""
    path = out / JOBS_FILE
    history = (read_json(path) or {}).get("submissions", [])
    history.append({"submitted": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "job_ids": array_ids,
                    "task_ids": task_ids, "tasks": [[c.key for c in g] for g in groups]})
    write_text_atomic(path, json.dumps({"submissions": history}, indent=2))
