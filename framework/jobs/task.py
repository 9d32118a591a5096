"""One task's work: a few jobs, run one after another, each a scorelift process.

``JobTask`` is the callable a submitit executor pickles and runs in a process of its own, on this
machine (``local``) or on a SLURM node as an array task (``slurm``); it is the only place where a
job's process is started, watched, stopped and recorded (``lifecycle.launch`` / ``lifecycle.settle``).

Stopping, the same under both executors:

* SIGTERM, SIGINT or SIGUSR1 to the task's process (the local driver forwards its own stop
  signal there through submitit's controller; ``scancel`` sends SIGTERM to every process of the
  SLURM job): no further job starts, the running one gets SIGTERM (checkpoint, exit 75), and is
  killed with its process group if it is still running ``stop_grace_s`` later or at a second
  signal. The task then returns the records it has, the stopped job's included, and the next
  invocation resumes that job from its checkpoint.
* Submitit's timeout / preemption signal (SIGUSR2, sent ``signal_delay_s`` before the time
  limit): ``checkpoint`` stops the running job the same way and hands submitit a copy of the
  task, which it requeues (``scontrol requeue`` on SLURM, a restart locally); the copy resumes
  the stopped job and runs the rest.
* The task's process dies with its parent (the local controller, or SLURM's step daemon): the
  kernel sends it SIGTERM (``processes.die_with_parent``), which is the first case.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import processes
from .folder import POLL_S, is_finished
from .job import Job
from .lifecycle import RunningJob, launch, settle


class JobTask:
    """Run ``jobs`` (in order) under ``out``; returns the record of each job it ran
    (``lifecycle.settle``: status ok, stopped or failed). Jobs already finished are skipped.

    ``env`` is added to the task's environment for each job (threads, MPS pipe); the task's own
    CUDA_VISIBLE_DEVICES, set by the executor, picks the job's GPU."""

    def __init__(self, out: Path, jobs: list[Job], env: dict[str, str], stop_grace_s: float):
        self.out, self.jobs, self.env, self.stop_grace_s = Path(out), list(jobs), dict(env), float(stop_grace_s)
        self._running: RunningJob | None = None
        self._records: list[dict] = []

    def __call__(self) -> list[dict]:
        processes.die_with_parent()
        self._records = []
        # Replaces submitit's own SIGTERM handler (which only logs it) for the task's duration.
        with processes.StopRequests() as stop:
            for job in self.jobs:
                if stop.requested:
                    break
                if not is_finished(self.out, job):
                    self._records.append(self._run(job, stop))
        return self._records

    def _run(self, job: Job, stop: processes.StopRequests) -> dict:
        self._running = running = launch(self.out, job, {**os.environ, **self.env})
        deadline, hurried = None, False
        try:
            while not processes.has_exited(running.proc):
                if stop.requested:
                    if deadline is None:
                        deadline = time.monotonic() + self.stop_grace_s
                        processes.signal_process(running.proc)
                    if stop.count > 1 and not hurried:
                        hurried, deadline = True, time.monotonic()
                    if time.monotonic() >= deadline and not running.killed:
                        processes.kill_group(running.proc)
                        running.killed = ("a second stop signal" if hurried
                                          else f"still running {self.stop_grace_s:g} s after the stop signal")
                stop.wait(POLL_S)
            return self._settle(running, stop.requested)
        finally:
            if self._running is running:  # an exception (or submitit's exit after a requeue) got here first
                processes.kill_group(running.proc)
                running.killed = running.killed or "its task ended"
                self._settle(running, True)

    def _settle(self, running: RunningJob, stopping: bool) -> dict:
        processes.kill_group(running.proc)  # what the job left in its group (none, normally)
        running.proc.wait()
        self._running = None
        return settle(self.out, running, stopping)

    def checkpoint(self):
        """Submitit's hook for a timeout or preemption (SIGUSR2): stop the running job with a
        checkpoint, then return this task again for submitit to requeue."""
        import submitit

        running = self._running
        if running is not None:
            processes.signal_process(running.proc)
            deadline = time.monotonic() + self.stop_grace_s
            while not processes.has_exited(running.proc) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if not processes.has_exited(running.proc):
                processes.kill_group(running.proc)
                running.killed = f"still running {self.stop_grace_s:g} s after the preemption signal"
            self._records.append(self._settle(running, True))
        return submitit.helpers.DelayedSubmission(JobTask(self.out, self.jobs, self.env, self.stop_grace_s))

    def __getstate__(self):  # what is pickled for the task: no live process or handler
        return {k: v for k, v in self.__dict__.items() if k not in ("_running", "_records")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._running, self._records = None, []
