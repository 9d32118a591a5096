"""One writer per run directory: an OS file lock on ``<run>/.lock``.

The lock is ``flock`` on an open file: the kernel releases it when the process dies, however it
dies, so a SIGKILL never leaves a stale lock. The file itself stays (it names the last holder);
only the lock on it counts. A second run, or a resume of a run that is still running, fails with
``RunDirInUse`` naming the holder's PID and host.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import RunDirInUse

LOCK_NAME = ".lock"


def holder_text(path: Path) -> str:
    """Who holds the lock, from what the holder wrote into the file."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"PID {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"


def in_use_error(run_dir: Path, path: Path) -> RunDirInUse:
    holder = holder_text(path)
    pid = None
    try:
        pid = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        pass
    stop = f" (`kill -TERM {pid}` stops it after its current step, with a checkpoint)" if pid else ""
    return RunDirInUse(
        f"The run directory {str(run_dir)!r} is in use by another scorelift process: {holder}. Two processes "
        f"writing one run would mix their files, so this one stops before writing anything. Wait for that run to "
        f"end or stop it{stop}, then resume; or choose another directory with hydra.run.dir=..."
    )


def check_not_in_use(run_dir: Path) -> None:
    """RunDirInUse if a live process holds ``run_dir``'s lock; creates nothing (a start-up check
    before anything is built; ``RunLock`` takes the lock for real)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise in_use_error(Path(run_dir), path) from None
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class RunLock:
    """Hold ``<run_dir>/.lock`` for a ``with`` block; the directory must exist."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fh = None

    def __enter__(self) -> "RunLock":
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise in_use_error(self.run_dir, self.path) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv}))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
