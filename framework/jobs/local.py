"""Running jobs on this machine through submitit's local executor: every GPU, or the CPUs.

Each job is one submitit task (a ``JobTask`` of one job) pinned to one GPU through the task's
CUDA_VISIBLE_DEVICES, ``per_gpu`` tasks on each GPU at once (``per_gpu`` tasks in all on a machine
without a GPU), in the order the caller gives. A job's chain of processes:

    driver (this process) -> submitit controller -> task process (JobTask) -> the job's scorelift run

Stopping (SIGTERM, SIGINT, SIGUSR1 to the driver): no new job starts, each running task's
controller gets SIGTERM, which it forwards to the task, which stops its job with a checkpoint
within the stop grace (``task``); a second signal is forwarded too and makes the tasks kill
their jobs at once. The controllers run in sessions of their own, so a terminal's Ctrl+C reaches
only the driver and the jobs get one polite signal; and they die with the driver (the kernel
sends them SIGTERM), so a driver killed with SIGKILL still has its jobs stop with a checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from ..errors import ConfigError
from . import processes
from .folder import POLL_S
from .job import Job
from .lifecycle import close_abandoned
from .task import JobTask

NO_TIMEOUT_MIN = 60 * 24 * 365  # the local executor's default limit is 2 minutes; jobs have none
# How long after the stop grace the driver waits for a task before it kills the task's processes:
# the task needs the grace for its job, then a moment to record it and write its result.
TASK_MARGIN_S = 30.0


def detect_gpus() -> list[int]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES where it is set (integer indices),
    else every GPU that ``nvidia-smi -L`` lists; [] on a machine without one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        items = [v.strip() for v in visible.split(",") if v.strip()]
        if not all(v.isdigit() for v in items):
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={visible!r}: the runner pins each job to one GPU by index, so "
                              "it needs comma-separated integer indices (or pass --gpus 0,1,... instead).")
        return [int(v) for v in items]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        lines = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(l for l in lines if l.startswith("GPU "))]


def slots(gpus: list[int], per_gpu: int) -> list[int | None]:
    """One entry per job that may run at once: a GPU index, or None for a CPU slot. Ordered so
    that consecutive slots are on different GPUs (the first jobs spread over all of them)."""
    if not gpus:
        return [None] * per_gpu
    return [g for _ in range(per_gpu) for g in gpus]


class SessionLocalExecutor:
    """Factory for submitit's LocalExecutor with one change: its controllers start in a session
    of their own and die with the driver (see the module docstring). The controller is started
    exactly as submitit's ``start_controller`` does (the same environment protocol), only the
    Popen differs."""

    @staticmethod
    def create(folder: Path):
        import submitit
        from submitit.local import local as submitit_local

        class Executor(submitit.LocalExecutor):
            def _submit_command(self, command: str):
                gpus = self.parameters.get("visible_gpus", ())[: self.parameters.get("gpus_per_node", 0)]
                env = dict(os.environ)
                env.update(
                    SUBMITIT_LOCAL_NTASKS="1", SUBMITIT_LOCAL_COMMAND=command,
                    SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", NO_TIMEOUT_MIN))),
                    SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
                    SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_STDERR_TO_STDOUT="1",
                    SUBMITIT_EXECUTOR="local", CUDA_VISIBLE_DEVICES=",".join(str(g) for g in gpus),
                    SUBMITIT_LOCAL_WITH_SHELL="",
                )
                proc = subprocess.Popen([sys.executable, "-m", "submitit.local._local", str(self.folder)], env=env,
                                        start_new_session=True, preexec_fn=processes.die_with_runner())
                return submitit_local.LocalJob(folder=self.folder, job_id=str(proc.pid), process=proc, tasks=[0])

        return Executor(folder=folder, max_num_timeout=3)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, frontier = [root], [root]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, [])]
        tree += frontier
    return tree


def kill_tree(root: int) -> None:
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_local(out: Path, todo: list[Job], gpus: list[int], per_gpu: int, env: dict[str, str],
              stop: processes.StopRequests, grace_s: float, log=print, describe=None) -> tuple[list[dict], int]:
    """Run ``todo`` in that order, ``per_gpu`` at a time on each GPU of ``gpus`` (or ``per_gpu``
    at a time on the CPU when ``gpus`` is empty); ``describe(job, record, done, total)`` is the
    line logged for each job that ends. Returns the records of the jobs that ran and how many were
    not started (the driver was stopped first)."""
    executor = SessionLocalExecutor.create(out / ".submitit" / "%j")
    free = deque(slots(gpus, max(1, per_gpu)))
    pending = deque(todo)
    active: dict = {}  # submitit job -> (slot, our job)
    records: list[dict] = []
    forwarded, deadline = 0, None
    try:
        while active or (pending and not stop.requested):
            if stop.requested and forwarded < min(stop.count, 2):
                if not forwarded:
                    log(f"Stopping ({stop.name}): no new jobs start; the {len(active)} running job(s) get "
                        f"{processes.FORWARDED_SIGNAL.name} to write a checkpoint and exit, within {grace_s:g} s "
                        f"(then SIGKILL). A second signal kills them now.")
                    deadline = time.monotonic() + grace_s + TASK_MARGIN_S
                else:
                    log("A second stop signal: killing the running jobs now (they resume from their last periodic checkpoint).")
                forwarded += 1
                for task in active:
                    processes.signal_process(task._process)
            while pending and free and not stop.requested:
                slot, job = free.popleft(), pending.popleft()
                executor.update_parameters(timeout_min=NO_TIMEOUT_MIN, gpus_per_node=0 if slot is None else 1,
                                           visible_gpus=() if slot is None else (slot,))
                active[executor.submit(JobTask(out, [job], env, grace_s))] = (slot, job)
            for task in [t for t in active if processes.has_exited(t._process)]:
                slot, job = active.pop(task)
                task._process.wait()
                free.append(slot)
                for record in task_records(out, task, job, stop.requested):
                    records.append(record)
                    if describe is not None:
                        log(describe(job, record, sum(r["status"] != "stopped" for r in records), len(todo)))
            if deadline is not None and time.monotonic() > deadline:
                for task in active:
                    kill_tree(task._process.pid)
            if active:
                stop.wait(POLL_S)
    finally:
        for task in active:  # only after an error in this loop: leave nothing running
            kill_tree(task._process.pid)
            task._process.wait()
    return records, len(pending)


def task_records(out: Path, task, job: Job, stopping: bool) -> list[dict]:
    """The records a finished submitit task returned; for one that ended without a result (killed,
    or it raised), the job's record made from its files, pointing at the task's log."""
    try:
        return list(task.result())
    except Exception as exc:  # noqa: BLE001  (submitit raises its own kinds for a failed or killed job)
        return [close_abandoned(out, job, stopping, f"its task ended without a result ({type(exc).__name__}; "
                                                    f"task log {task.paths.stdout})")]
