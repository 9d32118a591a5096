"""What a local run of jobs on GPUs needs beside the jobs: a sampler of the GPUs' utilisation, and
NVIDIA's Multi-Process Service daemon.

Jobs sharing one GPU as separate processes time-slice it: one process's kernels run at a time.
Where a job's steps are many small kernels (the shapes prior's), the runner can start the MPS
daemon for the jobs (if ``nvidia-cuda-mps-control`` exists), which lets kernels of different
processes run on the GPU at the same time, and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path


class GpuSampler:
    """Samples GPU utilisation (%) and memory (MiB) every ``period`` s into gpu_util.csv."""

    def __init__(self, path: Path, period: float = 1.0):
        self.path, self.period = path, period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        new = not self.path.is_file()
        with open(self.path, "a") as fh:
            if new:
                fh.write("time,gpu,utilization_pct,memory_mib\n")
            while not self._stop.wait(self.period):
                try:
                    lines = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
                except (OSError, subprocess.SubprocessError):
                    return
                for line in lines:
                    fh.write(f"{time.time():.1f},{line.replace(' ', '')}\n")
                fh.flush()


class MpsDaemon:
    """Start an MPS control daemon with private pipe / log folders; ``env`` is what the jobs need
    to reach it (empty when MPS is off or could not start, and the jobs then time-slice)."""

    def __init__(self, wanted: bool, log=print):
        self.wanted, self.log = wanted, log
        self.env: dict[str, str] = {}
        self.status = "off"
        self._exe = shutil.which("nvidia-cuda-mps-control")
        self._root = Path(f"/tmp/scorelift-mps-{os.getpid()}")  # short: the pipe is a unix socket path

    def __enter__(self):
        if not self.wanted:
            return self
        if self._exe is None:
            self.status = "unavailable (no nvidia-cuda-mps-control)"
            self.log(f"MPS was asked for but is {self.status}: the jobs will time-slice the GPU.")
            return self
        env = {"CUDA_MPS_PIPE_DIRECTORY": str(self._root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(self._root / "log")}
        for folder in env.values():
            Path(folder).mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([self._exe, "-d"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            self.status = f"failed to start (exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]})"
            self.log(f"MPS {self.status}: the jobs will time-slice the GPU.")
            return self
        self.env, self.status = env, "on"
        self.log(f"MPS daemon started (pipe {env['CUDA_MPS_PIPE_DIRECTORY']}).")
        return self

    def __exit__(self, *exc):
        if self.env:
            subprocess.run([self._exe], input="quit\n", env={**os.environ, **self.env}, text=True,
                           capture_output=True, timeout=60)
            shutil.rmtree(self._root, ignore_errors=True)
