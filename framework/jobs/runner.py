"""Running jobs: every unfinished one, in the order given, on this machine through submitit's
local executor (``local``) or on a SLURM cluster as job arrays (``slurm``).

    from scorelift.jobs import Job, run_jobs
    outcome = run_jobs(out, [Job("0", ("seed=0",), "job 0"), Job("1", ("seed=1",), "job 1")], workers=1)

Each job is a ``scorelift`` process in its folder below ``out`` (``folder`` says what the folder
holds); finished jobs are kept, stopped ones resume from their checkpoint, failed ones run again
only with ``retry_failed``. SIGTERM, SIGINT or SIGUSR1 to this process stops the jobs with a
checkpoint; the outcome's ``stopped_by`` then names the signal. ``scorelift -m`` (a sweep) and the
benchmark's cells are the two clients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import processes
from .folder import (
    holds_records,
    is_finished,
    jobs_to_run,
    recorded_fingerprint,
    resumable_segments,
    wait_for_earlier_processes,
    wall_time,
)
from .gpu import GpuSampler, MpsDaemon
from .job import Job
from .lifecycle import describe_stopped
from .local import detect_gpus, run_local
from .slurm import SlurmOptions, held_by_live_tasks, run_slurm

DEFAULT_STOP_GRACE_S = 60.0  # for a stopped job to finish its step, write its checkpoint and exit


@dataclass
class RunOutcome:
    """What ``run_jobs`` did: the records of the jobs run now (``lifecycle.settle``), where they
    ran, the MPS status, the signal that stopped the runner (None: it was not stopped), and how
    many jobs it did not start."""

    records: list[dict] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    threads_per_run: int = 1
    mps: str = "off"
    stopped_by: str | None = None
    not_started: int = 0

    @property
    def stopped(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "stopped"]


def job_line(out: Path, job: Job, record: dict, done: int, total: int) -> str:
    """The runner's line for a job whose process has ended (a client may give its own)."""
    if record["status"] == "stopped":
        return describe_stopped(out, job, record)
    head = f"[{done}/{total}] {job.label}: "
    wall = wall_time(record) or 0.0
    if record["status"] != "ok":
        return head + f"FAILED (exit {record['returncode']}, see {job.folder(out) / 'stdout.log'}) ({wall:.0f} s)"
    parts = f" in {record['resumed'] + 1} segments" if record["resumed"] else ""
    return head + f"finished ({wall:.0f} s{parts})"


def foreign_folders(out: Path, jobs: list[Job]) -> list[tuple[Job, str]]:
    """The jobs whose folder holds something else than a run of this job: (job, what it holds,
    "records of another job" or "files the runner did not write"). A client that must not replace
    them (a sweep given an old folder) refuses; the benchmark replaces its stale cells."""
    found = []
    for job in jobs:
        folder = job.folder(out)
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        if holds_records(folder):
            if recorded_fingerprint(folder) not in (None, job.fingerprint):
                found.append((job, "records of another job"))
        else:  # the runner writes segments.json before it starts a job's process
            found.append((job, "files the runner did not write"))
    return found


def run_jobs(out: Path, jobs: list[Job], workers: int, threads_per_run: int | None = None, mps: bool = False,
             log=print, stop_grace_s: float = DEFAULT_STOP_GRACE_S, gpus: list[int] | None = None,
             slurm: SlurmOptions | None = None, retry_failed: bool = False, before_start=None,
             describe=None, retry_hint: str = "retry_failed=True runs them") -> RunOutcome:
    """Run every unfinished job of ``jobs``, in that order: on this machine ``workers`` at once on
    each GPU of ``gpus`` (default: every GPU this process sees), or ``workers`` at once on the CPU
    where there is none; with ``slurm`` as SLURM job arrays instead.

    ``threads_per_run`` defaults to the CPU count over the number of jobs run at once (the SLURM
    task's CPUs there). ``before_start(jobs)`` runs once before the first job starts (to warm a
    cache the jobs share, say); ``describe(job, record, done, total)`` is the line logged for each
    job that ends (default ``job_line``); ``retry_hint`` tells the user how to retry failed jobs."""
    out = Path(out)
    describe = describe or (lambda job, record, done, total: job_line(out, job, record, done, total))
    unfinished = jobs_to_run(out, jobs, retry_failed, log, retry_hint)
    if slurm is not None:
        return run_jobs_on_slurm(out, jobs, unfinished, slurm, threads_per_run, log, stop_grace_s, before_start, describe)
    gpus = detect_gpus() if gpus is None else list(gpus)
    at_once = max(1, workers) * max(1, len(gpus))
    threads = threads_per_run or max(1, (os.cpu_count() or 1) // at_once)
    outcome = RunOutcome(gpus=gpus, threads_per_run=threads)
    with processes.StopRequests() as stop:
        todo = wait_for_earlier_processes(out, unfinished, stop_grace_s, stop, log)
        where = f"on {len(gpus)} GPU(s) ({', '.join(map(str, gpus))}), {workers} per GPU" if gpus else "on the CPU"
        log(f"{sum(is_finished(out, j) for j in jobs)} of {len(jobs)} jobs already finished; running {len(todo)}"
            f"{resumed_note(out, todo)} with {workers} worker(s) {where}.")
        if todo:
            if before_start is not None and not stop.requested:
                before_start(todo)
            env = thread_env(threads)
            with MpsDaemon(mps and not stop.requested, log) as daemon, GpuSampler(out / "gpu_util.csv"):
                env.update(daemon.env)
                outcome.records, outcome.not_started = run_local(out, todo, gpus, workers, env, stop, stop_grace_s,
                                                                 log, describe)
                outcome.mps = daemon.status
        outcome.stopped_by = stop.name
    return outcome


def run_jobs_on_slurm(out: Path, jobs: list[Job], unfinished: list[Job], slurm: SlurmOptions,
                      threads_per_run: int | None, log, stop_grace_s: float, before_start, describe) -> RunOutcome:
    """``run_jobs`` on a SLURM cluster: every unfinished job, in order, as job arrays."""
    threads = threads_per_run or slurm.cpus_per_task
    outcome = RunOutcome(threads_per_run=threads, mps="off (SLURM)")
    held = held_by_live_tasks(out)  # jobs an earlier, detached run's tasks still hold: waited for, not resubmitted
    attached = [j for j in unfinished if j.key in held]
    with processes.StopRequests() as stop:
        todo = wait_for_earlier_processes(out, [j for j in unfinished if j.key not in held], stop_grace_s, stop, log)
        log(f"{sum(is_finished(out, j) for j in jobs)} of {len(jobs)} jobs already finished; running {len(todo)}"
            f"{resumed_note(out, todo)} on SLURM.")
        if (todo or attached) and not stop.requested:
            if before_start is not None:
                before_start(todo)
            outcome.records, outcome.not_started = run_slurm(out, todo, slurm, thread_env(threads), stop, stop_grace_s,
                                                             log, attached=held, attached_jobs=attached,
                                                             describe=describe)
        outcome.stopped_by = stop.name
    return outcome


def resumed_note(out: Path, todo: list[Job]) -> str:
    resuming = sum(resumable_segments(out, j) is not None for j in todo)
    return f" ({resuming} stopped earlier: resumed)" if resuming else ""


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
