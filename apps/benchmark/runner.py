"""Running a benchmark's cells: each one a ``launch.py`` process, several at once, resumable.

Layout under the output folder:
    cells/<method>/<prompt-slug>/s<seed>/run/        the launch.py run directory
    cells/<method>/<prompt-slug>/s<seed>/stdout.log  its output
    cells/<method>/<prompt-slug>/s<seed>/cell.json   written last, only when the run succeeded

A cell with a ``cell.json`` whose fingerprint matches is finished and is not run again; any other
cell starts from scratch (a half-finished run is deleted, so its timing is never a mix of two
processes). GPU utilisation is sampled with nvidia-smi while cells run, where nvidia-smi exists.

Cells sharing one GPU as separate processes time-slice it: one process's kernels run at a time.
The shapes prior's steps are many small kernels, so with ``mps=True`` the runner starts NVIDIA's
Multi-Process Service daemon for the cells (if ``nvidia-cuda-mps-control`` exists), which lets
kernels of different processes run on the GPU at the same time, and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scorelift.benchmark.spec import Cell

# Each cell is one scorelift run in its own process: the installed package's entry point.
LAUNCH = [sys.executable, "-m", "scorelift"]


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.key


def is_finished(out: Path, cell: Cell) -> bool:
    marker = cell_dir(out, cell) / "cell.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == cell.fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def measured_costs(out: Path) -> dict[str, float]:
    """method -> median wall time (s) of its cells already finished under ``out``."""
    times: dict[str, list[float]] = {}
    for marker in (out / "cells").glob("*/*/*/cell.json"):
        try:
            record = json.loads(marker.read_text())
            times.setdefault(record["method"], []).append(float(record["cell_wall_s"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return {method: statistics.median(ts) for method, ts in times.items()}


def schedule(cells: list[Cell], out: Path, relative_cost: dict[str, float]) -> list[Cell]:
    """``cells`` with the slowest started first (longest-processing-time order), so that a slow
    cell does not start last and run alone while the other workers idle; ties keep preset order.

    A method's cost is the median wall time of its cells finished in ``out`` (earlier seeds of a
    resumed run); a method not yet measured gets the preset's ``relative_cost`` (default 1) times
    the measured methods' median time per unit of hint, or the bare hint when nothing is measured.
    """
    measured = measured_costs(out)
    per_unit = [t / relative_cost.get(m, 1.0) for m, t in measured.items()]
    scale = statistics.median(per_unit) if per_unit else 1.0

    def cost(cell: Cell) -> float:
        return measured.get(cell.method, relative_cost.get(cell.method, 1.0) * scale)

    return sorted(cells, key=cost, reverse=True)  # sorted() is stable


def run_cell(out: Path, cell: Cell, env: dict) -> dict:
    """Run one cell to completion in its own process; returns its cell.json content (status ok
    or failed). Output goes to the cell's stdout.log."""
    folder = cell_dir(out, cell)
    if folder.exists():
        shutil.rmtree(folder)  # stale or unfinished: start clean
    folder.mkdir(parents=True)
    cmd = [
        *LAUNCH, *cell.overrides, f"prompt={cell.prompt}", f"seed={cell.seed}",
        f"hydra.run.dir={folder / 'run'}", "trainer.progress_bar=false",
    ]
    start = time.perf_counter()
    with open(folder / "stdout.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    record = {
        "method": cell.method, "prompt": cell.prompt, "seed": cell.seed, "fingerprint": cell.fingerprint,
        "command": cmd[1:], "returncode": proc.returncode, "cell_wall_s": round(time.perf_counter() - start, 2),
        "status": "ok" if proc.returncode == 0 else "failed",
    }
    if proc.returncode == 0:
        tmp = folder / "cell.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(folder / "cell.json")
    else:
        (folder / "failed.json").write_text(json.dumps(record, indent=2))
    return record


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
    """Start an MPS control daemon with private pipe / log folders; ``env`` is what the cells need
    to reach it (empty when MPS is off or could not start, and the cells then time-slice)."""

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
            self.log(f"MPS was asked for but is {self.status}: the cells will time-slice the GPU.")
            return self
        env = {"CUDA_MPS_PIPE_DIRECTORY": str(self._root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(self._root / "log")}
        for folder in env.values():
            Path(folder).mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([self._exe, "-d"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            self.status = f"failed to start (exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]})"
            self.log(f"MPS {self.status}: the cells will time-slice the GPU.")
            return self
        self.env, self.status = env, "on"
        self.log(f"MPS daemon started (pipe {env['CUDA_MPS_PIPE_DIRECTORY']}).")
        return self

    def __exit__(self, *exc):
        if self.env:
            subprocess.run([self._exe], input="quit\n", env={**os.environ, **self.env}, text=True,
                           capture_output=True, timeout=60)
            shutil.rmtree(self._root, ignore_errors=True)


def warm_evaluation_cache(prompts: list[str]) -> None:
    """Render the shapes world's ground truth once, here, so that concurrent cells only read the
    cache file instead of all rendering (and writing) it at once."""
    from scorelift.shapes_world.world import parse_prompt

    if any(parse_prompt(p) for p in prompts):
        from scorelift.shapes_world.evaluate import evaluation_truth

        evaluation_truth()


def run_cells(out: Path, cells: list[Cell], workers: int, threads_per_run: int, mps: bool = False,
              log=print, relative_cost: dict[str, float] | None = None) -> tuple[list[dict], str]:
    """Run every unfinished cell, ``workers`` at a time, slowest first (see ``schedule``); returns
    the records of the cells run now and the MPS status ("off", "on", or why it is not on)."""
    todo = schedule([c for c in cells if not is_finished(out, c)], out, relative_cost or {})
    log(f"{len(cells) - len(todo)} of {len(cells)} cells already finished; running {len(todo)} with {workers} worker(s).")
    if not todo:
        return [], "off"
    warm_evaluation_cache(sorted({c.prompt for c in todo}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_run), "MKL_NUM_THREADS": str(threads_per_run),
           "PYTHONUNBUFFERED": "1"}
    done: list[dict] = []
    lock = threading.Lock()

    def one(cell: Cell) -> dict:
        record = run_cell(out, cell, env)
        with lock:
            done.append(record)
            metrics = cell_dir(out, cell) / "run" / "metrics.json"
            result = ""
            if record["status"] == "ok" and metrics.is_file():
                m = json.loads(metrics.read_text())
                result = f"IoU {m['iou']:.3f} id {m['identification']:.2f} "
            status = "" if record["status"] == "ok" else f"FAILED (exit {record['returncode']}, see {cell_dir(out, cell) / 'stdout.log'}) "
            log(f"[{len(done)}/{len(todo)}] {cell.method} | {cell.prompt} | seed {cell.seed}: {status}{result}({record['cell_wall_s']:.0f} s)")
        return record

    with MpsDaemon(mps, log) as daemon, GpuSampler(out / "gpu_util.csv"), ThreadPoolExecutor(max(1, workers)) as pool:
        env.update(daemon.env)
        list(pool.map(one, todo))
    return done, daemon.status
