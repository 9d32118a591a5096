"""A job's folder, the one resumable format of every job the runner runs, and what it says.

    <out>/<key>/run/            the scorelift run directory
    <out>/<key>/stdout.log      the run's output (of every process it ran in)
    <out>/<key>/segments.json   the processes it ran in so far: how each ended, its wall time
    <out>/<key>/job.json        written last, only when the run finished
    <out>/<key>/failed.json     when it failed

A job with a ``job.json`` whose fingerprint matches is finished and is not run again (folders of
earlier versions, where the benchmark's runner wrote ``cell.json``, read the same). A job that was
stopped (its process exited 75, "stopped, resume me", or the runner killed it while stopping) and
whose run holds a checkpoint is resumed (``scorelift resume=<run>``), so its compute is not lost:
a resumed run trains to the same weights as an uninterrupted one, and its job.json's ``wall_s``
is the sum of its segments. A job that failed (failed.json) is left alone unless the runner is
asked to retry failures; any other job starts from scratch (``lifecycle.launch``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import EXIT_STOPPED, RunDirInUse
from ..run_lock import check_not_in_use
from .job import Job
from .processes import StopRequests

FINISHED = "job.json"
EARLIER_FINISHED = "cell.json"  # what the benchmark's own runner wrote before there was one runner
SEGMENTS = "segments.json"
FAILED = "failed.json"
RECORDS = (FINISHED, EARLIER_FINISHED, SEGMENTS, FAILED)
POLL_S = 0.2  # how often the runner looks at its jobs (a stop signal wakes it at once)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_record(folder: Path) -> dict | None:
    """The record of the finished run in ``folder`` (job.json, or an earlier runner's cell.json);
    None when the folder holds none."""
    for name in (FINISHED, EARLIER_FINISHED):
        record = read_json(folder / name)
        if record is not None:
            return record
    return None


def wall_time(record: dict) -> float | None:
    """A finished job's wall time over all its processes (s): ``wall_s``, ``cell_wall_s`` in
    records of earlier versions."""
    value = record.get("wall_s", record.get("cell_wall_s"))
    return None if value is None else float(value)


def is_finished(out: Path, job: Job) -> bool:
    record = finished_record(job.folder(out))
    return record is not None and record.get("fingerprint") == job.fingerprint


def holds_records(folder: Path) -> bool:
    """Whether ``folder`` holds any of the runner's records (of this job or another)."""
    return any((folder / name).is_file() for name in RECORDS)


def recorded_fingerprint(folder: Path) -> str | None:
    """The fingerprint the folder's records name (finished, stopped or failed), or None."""
    for record in (finished_record(folder), read_json(folder / SEGMENTS), read_json(folder / FAILED)):
        if record and record.get("fingerprint"):
            return record["fingerprint"]
    return None


def has_checkpoint(run: Path) -> bool:
    """Whether a run directory holds a checkpoint to resume from (the run picks the newest
    readable one itself)."""
    folder = run / "checkpoints"
    return (folder / "last.ckpt").is_file() or any(folder.glob("step_*.ckpt"))


def checkpoint_step(run: Path) -> int | None:
    """The global step of the run's last.ckpt (checked whole, tensors not loaded); None if unreadable."""
    try:
        from ..outputs.checkpoint_files import read_step  # imports torch: only when a job was stopped

        return read_step(run / "checkpoints" / "last.ckpt")
    except Exception:  # noqa: BLE001  (only for a message: missing, damaged or foreign, say nothing)
        return None


def last_invocation_status(run: Path) -> str | None:
    """How the run's last process ended by its own account (run_info.json): finished, stopped,
    failed, write failed; None when it did not say (it was killed, or never started)."""
    info = read_json(run / "run_info.json") or {}
    invocations = info.get("invocations") or [{}]
    return invocations[-1].get("status")


def resumable_segments(out: Path, job: Job) -> list[dict] | None:
    """The segments (processes) the job ran in so far, if it was stopped and can be resumed;
    None when it is to start from scratch.

    Resumable: its segments.json is of this job (same fingerprint), the last segment ended
    stopped (exit 75, or killed while the runner was stopping) and the run holds a checkpoint. A
    segment the runner could not close (the runner itself was killed; its jobs then got
    SIGTERM, see ``processes.die_with_runner``) counts as stopped when the run says so in
    run_info.json; its wall time is taken up to the last write of stdout.log."""
    folder = job.folder(out)
    record = read_json(folder / SEGMENTS) or segments_of_an_earlier_runner(folder)
    if not record or record.get("fingerprint") != job.fingerprint or not record.get("segments"):
        return None
    if not has_checkpoint(folder / "run"):
        return None
    segments = [dict(s) for s in record["segments"]]
    last = segments[-1]
    if "outcome" not in last:
        if last_invocation_status(folder / "run") != "stopped":
            return None
        try:
            ended = (folder / "stdout.log").stat().st_mtime
        except OSError:
            ended = last["started"]
        last.update(outcome="stopped", returncode=None, wall_s=round(max(0.0, ended - last["started"]), 2),
                    note="the runner ended before this process did; wall time up to the last line of stdout.log")
    return segments if last["outcome"] == "stopped" else None


def segments_of_an_earlier_runner(folder: Path) -> dict | None:
    """The one segment of a job that a runner without segments.json recorded as failed with exit
    75 (stopped by a signal, e.g. the terminal's Ctrl+C): resumable like any stopped job."""
    failed = read_json(folder / FAILED) or {}
    wall = wall_time(failed)
    if failed.get("returncode") != EXIT_STOPPED or wall is None:
        return None
    return {"fingerprint": failed.get("fingerprint"), "segments": [{
        "how": "start", "command": failed.get("command"), "outcome": "stopped", "returncode": EXIT_STOPPED,
        "wall_s": wall, "note": "stopped (exit 75)"}]}


def job_state(out: Path, job: Job) -> str:
    """finished, stopped (to be resumed), failed, or not run: what the next invocation finds."""
    if is_finished(out, job):
        return "finished"
    if resumable_segments(out, job) is not None:
        return "stopped"
    return "failed" if (job.folder(out) / FAILED).is_file() else "not run"


def jobs_to_run(out: Path, jobs: list[Job], retry_failed: bool, log,
                retry_hint: str = "retrying failures runs them") -> list[Job]:
    """The unfinished jobs of ``jobs``, without those that failed earlier unless ``retry_failed``
    (a failure is looked at before it costs compute again); ``retry_hint`` says how to retry them."""
    unfinished = [j for j in jobs if not is_finished(out, j)]
    failed = [j for j in unfinished if job_state(out, j) == "failed"]
    if failed and not retry_failed:
        log(f"{len(failed)} job(s) failed earlier and are not run again ({retry_hint}): "
            + "; ".join(f"{j.label}: {j.folder(out) / 'stdout.log'}" for j in failed))
        return [j for j in unfinished if j not in failed]
    return unfinished


def wait_for_earlier_processes(out: Path, jobs: list[Job], timeout: float, stop: StopRequests,
                               log=print) -> list[Job]:
    """``jobs`` less those whose run directory is still held by a live process (the job of an
    earlier runner that was killed, still writing its checkpoint), after waiting up to ``timeout``
    s for them; a stop signal ends the wait. Deleting or resuming a run that is still running
    would mix two writers."""
    def busy(job: Job) -> bool:
        try:
            check_not_in_use(job.folder(out) / "run")
        except RunDirInUse:
            return True
        return False

    held = [j for j in jobs if (j.folder(out) / "run" / ".lock").is_file() and busy(j)]
    if held:
        log(f"{len(held)} job(s) still in use by a process of an earlier run (stopping?): waiting up to {timeout:g} s.")
    deadline = time.monotonic() + timeout
    while held and time.monotonic() < deadline and not stop.requested:
        stop.wait(POLL_S)
        held = [j for j in held if busy(j)]
    for job in held:
        log(f"skipped: {job.label}: {job.folder(out) / 'run'} is still in use by another process; run the same "
            f"command again once it has ended.")
    return [j for j in jobs if j not in held]
