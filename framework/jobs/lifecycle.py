"""A job's process, from its start to its records: ``launch`` starts it (fresh, or resuming a
stopped run), ``settle`` records how it ended, ``close_abandoned`` records a job whose task
never returned. The folder format is ``folder``'s."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import EXIT_STOPPED
from . import processes
from .folder import (
    FAILED,
    FINISHED,
    SEGMENTS,
    checkpoint_step,
    finished_record,
    has_checkpoint,
    is_finished,
    read_json,
    resumable_segments,
    write_json_atomic,
)
from .job import Job

# Each job is one scorelift run in its own process: the installed package's entry point.
LAUNCH = [sys.executable, "-m", "scorelift"]
# A job stops with a checkpoint on SIGUSR2 too: SLURM sends the signal it was asked for ahead of a
# time limit (submitit asks for SIGUSR2) to every process of the job step, the run included.
JOB_STOP_SIGNALS = "trainer.stop_signals=[SIGTERM,SIGUSR1,SIGINT,SIGUSR2]"


def fresh_command(folder: Path, job: Job) -> list[str]:
    return [*LAUNCH, *job.overrides, f"hydra.run.dir={folder / 'run'}", "trainer.progress_bar=false", JOB_STOP_SIGNALS]


def resume_command(folder: Path) -> list[str]:
    """``resume=`` re-applies the run's saved overrides (the job's), so nothing else is needed."""
    return [*LAUNCH, f"resume={folder / 'run'}"]


@dataclass
class RunningJob:
    """A job's process and what the runner knows of it."""

    job: Job
    proc: subprocess.Popen
    log: IO
    segments: list[dict]  # earlier segments, then this one (open: no "outcome" yet)
    started: float  # time.perf_counter() at the start of this segment
    killed: str | None = None  # why it was sent SIGKILL (the grace period ran out, a second signal, ...)


def launch(out: Path, job: Job, env: dict) -> RunningJob:
    """Start the job's process: resume it if it was stopped (``resumable_segments``), else from
    scratch in a clean folder (what a failed, stale or uncheckpointed run left is deleted, so no
    file of the job mixes two runs; a client that must not lose a folder it did not make checks
    first, ``runner.foreign_folders``). segments.json records the segment before the process starts."""
    folder = job.folder(out)
    earlier = resumable_segments(out, job)
    if earlier is None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        earlier, cmd, mode = [], fresh_command(folder, job), "w"
    else:
        cmd, mode = resume_command(folder), "a"
        (folder / FAILED).unlink(missing_ok=True)  # an earlier runner's record of the stop
    segment = {"how": "resume" if earlier else "start", "command": cmd[1:], "started": time.time()}
    segments = [*earlier, segment]
    write_json_atomic(folder / SEGMENTS, {"fingerprint": job.fingerprint, "segments": segments})
    log = open(folder / "stdout.log", mode)
    if earlier:
        log.write(f"\n[scorelift-jobs] resuming the stopped run (segment {len(segments)}): {' '.join(cmd[1:])}\n")
        log.flush()
    try:
        proc = processes.start_process(cmd, log, env)
    except BaseException:
        log.close()
        raise
    return RunningJob(job, proc, log, segments, time.perf_counter())


def outcome_of(returncode: int, killed: str | None, runner_stopping: bool) -> str:
    """finished (exit 0), stopped (exit 75: checkpoint written; or ended by a signal while the
    runner was stopping, a SIGKILL after the grace period included) or failed (anything else)."""
    if returncode == 0:
        return "finished"
    if returncode == EXIT_STOPPED or killed or (returncode < 0 and runner_stopping):
        return "stopped"
    return "failed"


STATUS = {"finished": "ok", "stopped": "stopped", "failed": "failed"}


def record_of(job: Job, segments: list[dict], outcome: str, **more) -> dict:
    """A job's record (job.json, failed.json, and what the runner returns for it)."""
    return {
        **job.facts, "key": job.key, "fingerprint": job.fingerprint,
        "command": segments[0]["command"] if segments else None,
        "returncode": segments[-1].get("returncode") if segments else None,
        "wall_s": round(sum(s.get("wall_s", 0.0) for s in segments), 2),  # every process of the job
        "status": STATUS.get(outcome, "failed"), "resumed": max(0, len(segments) - 1), "segments": segments, **more,
    }


def settle(out: Path, running: RunningJob, runner_stopping: bool) -> dict:
    """Record a job whose process has ended (and been reaped): close its segment in
    segments.json; then job.json (finished: written last, only then), failed.json (the next
    invocation starts it from scratch), or nothing more (stopped: the next one resumes it).
    Returns the job's record (status ok, stopped or failed)."""
    job, folder, rc = running.job, running.job.folder(out), running.proc.returncode
    running.log.close()
    outcome = outcome_of(rc, running.killed, runner_stopping)
    segments = [*running.segments[:-1], {**running.segments[-1], "outcome": outcome, "returncode": rc,
                                          "wall_s": round(time.perf_counter() - running.started, 2)}]
    if outcome == "stopped":
        segments[-1]["note"] = stop_note(rc, running.killed, folder / "run")
    record = record_of(job, segments, outcome)
    write_json_atomic(folder / SEGMENTS, {"fingerprint": job.fingerprint, "segments": segments})
    if outcome == "finished":
        write_json_atomic(folder / FINISHED, record)
        (folder / SEGMENTS).unlink(missing_ok=True)  # job.json holds them now
    elif outcome == "failed":
        write_json_atomic(folder / FAILED, record)
    return record


def stop_note(returncode: int, killed: str | None, run: Path) -> str:
    """How a stopped job's process ended, in words."""
    if killed:
        return f"killed (SIGKILL: {killed})"
    if returncode == EXIT_STOPPED:
        info = read_json(run / "run_info.json") or {}
        by = ((info.get("invocations") or [{}])[-1]).get("signal")
        return f"stopped by {by} (exit 75)" if by else "stopped (exit 75)"
    try:
        return f"ended by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"exit {returncode}"


def describe_stopped(out: Path, job: Job, record: dict) -> str:
    """One line for a stopped job: how it ended and what the next invocation does with it."""
    if not record["segments"]:  # its task ended before it started the job's process
        return f"not started: {job.label}; the next run starts it."
    run = job.folder(out) / "run"
    how = record["segments"][-1].get("note", f"exit {record['returncode']}")
    if not has_checkpoint(run):
        return f"stopped: {job.label}: {how}, before its first checkpoint; the next run starts it again."
    step = checkpoint_step(run)
    at = f"step {step}" if step is not None else "its last checkpoint"
    return f"stopped: {job.label}: {how}, checkpoint at {at}; the next run resumes it from there."


def close_abandoned(out: Path, job: Job, stopping: bool, why: str) -> dict:
    """The record of a job whose task ended without returning it (the task was killed, or
    raised): its open segment is closed from the files, as stopped when the driver was stopping
    (the next invocation resumes it from its last periodic checkpoint) and as failed otherwise; a
    job whose process never began is stopped when the driver was stopping, else failed."""
    folder = job.folder(out)
    if is_finished(out, job):  # it finished; only the task's result went missing
        return finished_record(folder)
    failed = read_json(folder / FAILED)
    if failed and failed.get("fingerprint") == job.fingerprint:  # the task recorded the failure itself
        return failed
    segments = [dict(s) for s in ((read_json(folder / SEGMENTS) or {}).get("segments") or [])]
    closed_by_task = bool(segments) and "outcome" in segments[-1]  # stopped, and recorded so
    if segments and not closed_by_task:
        try:
            ended = (folder / "stdout.log").stat().st_mtime
        except OSError:
            ended = time.time()
        segments[-1].update(outcome="stopped" if stopping else "failed", returncode=None,
                            wall_s=round(max(0.0, ended - segments[-1]["started"]), 2), note=f"killed ({why})")
        write_json_atomic(folder / SEGMENTS, {"fingerprint": job.fingerprint, "segments": segments})
    # A task stopped before its job's process began (a stop that came as it started) left no
    # segment: not started, not failed; the next invocation runs it.
    outcome = segments[-1]["outcome"] if segments else "stopped" if stopping else "failed"
    record = record_of(job, segments, outcome, **({} if closed_by_task else {"note": why}))
    if record["status"] == "failed":
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / FAILED, record)
    return record
