"""Running jobs on a SLURM cluster: submitit job arrays on a shared filesystem.

Each array task is a ``JobTask`` of ``jobs_per_task`` jobs, run one after another on the
resources of one SLURM job (``gpus_per_task`` GPUs, ``cpus_per_task`` CPUs). The output folder
must be on a filesystem every node sees: the tasks write the jobs' folders there, and the driver
(this process, on the login node) reads them. The driver waits with a progress line built from
the jobs' own files and from ``squeue`` (never ``sacct``: the accounting database need not
exist), then returns the records the tasks returned.

Stopping and preemption are the task's (``task``): ``scancel`` sends SIGTERM, the running job
writes its checkpoint and the next invocation resumes it; the time-limit / preemption signal
submitit asks SLURM for (SIGUSR2, ``signal_delay_s`` ahead) requeues the task, which resumes its
job. A stop signal to the driver does not cancel the tasks: they run on, and the same command,
run again, waits for the jobs they hold (``slurm_jobs.json`` keeps every submission's ids).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import ConfigError
from . import processes
from .folder import FAILED, is_finished, read_json
from .job import Job
from .lifecycle import close_abandoned
from .task import JobTask

JOBS_FILE = "slurm_jobs.json"
POLL_S = 2.0


def live_jobs(job_ids: list[str]) -> dict[str, str]:
    """SLURM id ("12_3" for an array task) -> state, for the jobs of ``job_ids`` (array ids or
    single ones) still pending, running or completing; {} when none is.

    ``squeue`` answers from the controller itself, where ``sacct`` (what submitit asks) needs the
    accounting database, which small clusters often do not configure."""
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "--jobs", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:  # "Invalid job id specified": every one of them has left the queue
        return {}
    return dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())


@dataclass
class SlurmOptions:
    """What each array task asks SLURM for, and how the jobs are cut into tasks."""

    partition: str | None = None
    time_min: int = 60
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    jobs_per_task: int = 1
    array_parallelism: int = 256
    signal_delay_s: int = 90
    max_requeues: int = 3
    sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch options, e.g. {"qos": "high"}
    setup: list[str] = field(default_factory=list)  # shell lines each task runs first (module load ...)
    job_name: str = "scorelift"

    def check(self) -> None:
        for name in ("time_min", "cpus_per_task", "jobs_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The SLURM option {name} is {getattr(self, name)}; it must be at least 1.")
        if self.gpus_per_task < 0 or self.max_requeues < 0:
            raise ConfigError(f"The SLURM options gpus_per_task ({self.gpus_per_task}) and max_requeues "
                              f"({self.max_requeues}) must be 0 or more.")


def progress(out: Path, jobs: list[Job], live: dict[str, str]) -> str:
    done = sum(is_finished(out, j) for j in jobs)
    failed = sum((j.folder(out) / FAILED).is_file() and not is_finished(out, j) for j in jobs)
    running = sum(s.startswith("RUNNING") or s.startswith("COMPLETING") for s in live.values())
    queued = sum(s.startswith("PENDING") or s.startswith("REQUEUE") for s in live.values())
    return f"jobs: {done} done, {failed} failed; array tasks: {running} running, {queued} queued"


def held_by_live_tasks(out: Path) -> dict[str, str]:
    """Job key -> SLURM task id ("12_3"), for the jobs of earlier submissions (slurm_jobs.json)
    whose task squeue still lists: a driver stopped before them left them queued or running."""
    history = (read_json(out / JOBS_FILE) or {}).get("submissions", [])
    tasks = [(task, keys) for s in history for task, keys in zip(s.get("task_ids", []), s["tasks"])]
    live = live_jobs(sorted({task.split("_")[0] for task, _ in tasks}))
    return {key: task for task, keys in tasks if task in live for key in keys}


def run_slurm(out: Path, todo: list[Job], opts: SlurmOptions, env: dict[str, str], stop: processes.StopRequests,
              grace_s: float, log=print, attached: dict[str, str] | None = None,
              attached_jobs: list[Job] = (), describe=None) -> tuple[list[dict], int]:
    """Submit ``todo`` as one job array, wait for it and for ``attached_jobs`` (held by the earlier
    tasks ``attached``: job key -> task id, not submitted again), return the records and 0
    (nothing is left unstarted: SLURM queues it all). A stop signal detaches: the tasks run on.
    ``describe(job, record, done, total)`` is the line logged for each job at the end."""
    import submitit

    opts.check()
    attached = attached or {}
    array_ids = sorted({task.split("_")[0] for task in attached.values()})
    if attached_jobs:
        log(f"{len(attached_jobs)} job(s) are held by array tasks of an earlier run that are still queued or running "
            f"({', '.join(sorted(set(attached.values())))}): waiting for them, not submitting them again.")
    if todo:
        executor = submitit.SlurmExecutor(folder=out / ".submitit" / "%j", max_num_timeout=opts.max_requeues)
        params = dict(time=opts.time_min, cpus_per_task=opts.cpus_per_task, array_parallelism=opts.array_parallelism,
                      signal_delay_s=opts.signal_delay_s, stderr_to_stdout=True, job_name=opts.job_name,
                      additional_parameters=dict(opts.sbatch))
        if opts.partition:
            params["partition"] = opts.partition
        if opts.gpus_per_task:
            params["gpus_per_node"] = opts.gpus_per_task
        if opts.setup:
            params["setup"] = list(opts.setup)
        executor.update_parameters(**params)
        groups = [todo[i:i + opts.jobs_per_task] for i in range(0, len(todo), opts.jobs_per_task)]
        with executor.batch():
            tasks = [executor.submit(JobTask(out, group, env, grace_s)) for group in groups]
        submitted = sorted({t.job_id.split("_")[0] for t in tasks})
        record_submission(out, submitted, groups, [t.job_id for t in tasks])
        log(f"Submitted {len(todo)} job(s) as {len(tasks)} array task(s) of SLURM job {', '.join(submitted)} "
            f"({opts.jobs_per_task} job(s) per task, at most {opts.array_parallelism} at once).")
        array_ids = sorted({*array_ids, *submitted})
    waited = [*todo, *attached_jobs]
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
        log(f"Stopping ({stop.name}): the array tasks of SLURM job {', '.join(array_ids)} keep running on the cluster "
            "(scancel them to stop them); run the same command again to wait for them.")
        return [], 0
    # Every task has left the queue: each job's record is in its folder (job.json, failed.json, or
    # segments.json for a job its task stopped), read back without asking submitit for the tasks'
    # results, which would ask sacct. A job whose task ended without recording it (cancelled while
    # pending, killed) counts as stopped: the next invocation runs or resumes it.
    records = [close_abandoned(out, job, True, "its array task ended without recording it") for job in waited]
    if describe is not None:
        for i, (job, record) in enumerate(zip(waited, records), 1):
            log(describe(job, record, i, len(waited)))
    return records, 0


def record_submission(out: Path, array_ids: list[str], groups: list[list[Job]], task_ids: list[str]) -> None:
    """Append this submission to slurm_jobs.json (history kept: every submission's array ids, and
    each task's id and jobs)."""
    path = out / JOBS_FILE
    history = (read_json(path) or {}).get("submissions", [])
    history.append({"submitted": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "job_ids": array_ids,
                    "task_ids": task_ids, "tasks": [[j.key for j in g] for g in groups]})
    write_text_atomic(path, json.dumps({"submissions": history}, indent=2))
