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
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from scorelift.atomic import write_text_atomic
from scorelift.benchmark import processes
from scorelift.benchmark.cell_task import CellTask
from scorelift.benchmark.runner import cell_dir, cell_line, close_abandoned, is_finished, read_json
from scorelift.benchmark.spec import Cell
from scorelift.errors import ConfigError

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


def live_jobs(job_ids: list[str]) -> dict[str, str]:
    """SLURM id ("12_3" for an array task) -> state, for the jobs of ``job_ids`` (array ids or
    single ones) still pending, running or completing; {} when none is."""
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "--jobs", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:  # "Invalid job id specified": every one of them has left the queue
        return {}
    return dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())


def progress(out: Path, cells: list[Cell], live: dict[str, str]) -> str:
    done = sum(is_finished(out, c) for c in cells)
    failed = sum((cell_dir(out, c) / "failed.json").is_file() and not is_finished(out, c) for c in cells)
    running = sum(s.startswith("RUNNING") or s.startswith("COMPLETING") for s in live.values())
    queued = sum(s.startswith("PENDING") or s.startswith("REQUEUE") for s in live.values())
    return f"cells: {done} done, {failed} failed; jobs: {running} running, {queued} queued"


def run_slurm(out: Path, todo: list[Cell], opts: SlurmOptions, env: dict[str, str], stop: processes.StopRequests,
              grace_s: float, log=print) -> tuple[list[dict], int]:
    """Submit ``todo`` as one job array, wait for it, return the records and 0 (nothing is left
    unstarted: SLURM queues it all). A stop signal detaches: the jobs run on."""
    import submitit

    opts.check()
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
    array_ids = sorted({j.job_id.split("_")[0] for j in jobs})
    record_submission(out, array_ids, groups)
    log(f"Submitted {len(todo)} cell(s) as {len(jobs)} array task(s) of job {', '.join(array_ids)} "
        f"({opts.cells_per_job} cell(s) per task, at most {opts.array_parallelism} at once).")
    last = None
    while not stop.requested:
        live = live_jobs(array_ids)
        line = progress(out, todo, live)
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
        for record in got:
            records.append(record)
    for i, record in enumerate(records, 1):
        cell = next(c for c in todo if c.fingerprint == record["fingerprint"])
        log(cell_line(out, cell, record, i, len(todo)))
    return records, 0


def record_submission(out: Path, array_ids: list[str], groups: list[list[Cell]]) -> None:
    """Append this submission to slurm_jobs.json (history kept: every submission's ids and cells)."""
    path = out / JOBS_FILE
    history = (read_json(path) or {}).get("submissions", [])
    history.append({"submitted": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "job_ids": array_ids,
                    "tasks": [[c.key for c in g] for g in groups]})
    write_text_atomic(path, json.dumps({"submissions": history}, indent=2))
