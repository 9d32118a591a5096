"""The runner's child processes: started so that none outlives the runner, and the signals that
stop the runner.

Every job runs in a session of its own (``start_new_session``), for two reasons:

* Ctrl+C in a terminal sends SIGINT to the whole foreground process group. Were the jobs in the
  runner's group they would get it directly *and* again from the runner; a scorelift run takes a
  second SIGINT as "stop at once, without the checkpoint". In their own session they get only
  the one signal the runner forwards.
* A job's own children (ffmpeg writing its turntable, say) share its process group, so one
  ``killpg`` at the end of the grace period ends all of them.

The polite stop goes to the job's main process only (``signal_process``): the scorelift run then
finishes its step, writes its checkpoint and exits 75, and its helpers finish their work (a
SIGTERM to ffmpeg mid-write would turn a clean stop into a failed run). The SIGKILL after the
grace period, and the sweep after a job has exited, go to the whole group (``kill_group``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys

from ..stop_signals import SAME_STOP_S, StopSignals  # noqa: F401  (SAME_STOP_S: the runner's too)

# What the runner sends each running job when it is stopped, whichever signal it got itself:
# SIGTERM is in every run's default trainer.stop_signals, and a repeat of it changes nothing (a
# second SIGINT would interrupt a run without its checkpoint). Also the parent-death signal below.
FORWARDED_SIGNAL = signal.SIGTERM
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class StopRequests(StopSignals):
    """The runner's stop signals (``scorelift.stop_signals``, the catcher a run uses too): each stop
    only records that the runner is to stop, counts (a stop within ``SAME_STOP_S`` of the one before
    is the same stop) and wakes ``wait``; a second SIGINT is one more stop, not an interrupt, since
    the runner stops its jobs itself."""

    def __init__(self, signals=STOP_SIGNALS):
        super().__init__([s.name for s in signals], second_sigint_interrupts=False, announce=False)


@functools.lru_cache(maxsize=1)
def _libc_prctl():
    """libc's prctl on Linux (None elsewhere, or where it cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_runner():
    """A ``preexec_fn`` that makes the kernel send the child FORWARDED_SIGNAL when the runner dies,
    or None where that is not available.

    Why the kernel: a runner that dies without running its handlers (SIGKILL, the OOM killer, a
    crash of the interpreter) cannot stop its jobs itself. Linux's ``prctl(PR_SET_PDEATHSIG)``
    needs no change in the jobs and no watcher process; a watchdog thread in each job that polls
    its parent, or a pipe whose end it watches, would need both. The signal is SIGTERM rather than
    SIGKILL: the orphaned job then stops as a forwarded stop does (checkpoint, run_info.json says
    stopped, exit 75), so the next invocation resumes it without losing steps, and a scorelift run
    always ends on SIGTERM (gracefully where trainer.stop_signals has it, by its default action
    otherwise). Other systems (macOS) have no such call: there the jobs of a runner killed with
    SIGKILL run on to their end, as they always did.

    Two caveats of the call, and what is done about them: the signal follows the death of the
    *thread* that started the child, so the runner starts every job from its main thread (which
    lives as long as the runner); and a runner that dies between the fork and the call would be
    missed, so the child checks that its parent is still the runner before it execs.
    """
    prctl = _libc_prctl()
    if prctl is None:
        return None
    runner = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: calls only, no imports
        prctl(PR_SET_PDEATHSIG, int(FORWARDED_SIGNAL), 0, 0, 0)
        if os.getppid() != runner:  # the runner died before the call took effect
            os._exit(1)

    return preexec


def die_with_parent() -> None:
    """Have the kernel send this process FORWARDED_SIGNAL when its parent dies (Linux; nothing
    elsewhere). A task's process calls it first: if submitit's controller (or SLURM's step daemon)
    is killed, the task still stops its job with a checkpoint instead of running on."""
    prctl = _libc_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(FORWARDED_SIGNAL), 0, 0, 0)


def start_process(cmd: list[str], log, env: dict) -> subprocess.Popen:
    """``cmd`` as a child in a session of its own (see the module docstring), its output to the
    open file ``log``, ending when the runner dies (``die_with_runner``, on Linux)."""
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=die_with_runner())


def has_exited(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has ended, without reaping it where the system allows (``waitid`` with
    WNOWAIT): until it is reaped its id stays reserved, so ``kill_group`` on its group cannot hit a
    new process that was given the same id."""
    if proc.returncode is not None:
        return True
    if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped already
            return True
    return proc.poll() is not None


def signal_process(proc: subprocess.Popen, sig: signal.Signals = FORWARDED_SIGNAL) -> None:
    """Send ``sig`` to ``proc`` itself (not its group); nothing if it has gone."""
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s whole process group (it leads one: ``start_process``); nothing if the
    group has gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
