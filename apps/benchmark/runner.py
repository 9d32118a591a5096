"""Running a benchmark's cells: each one a ``scorelift`` process, several at once, resumable and stoppable.

Layout under the output folder:
    cells/<method>/<prompt-slug>/s<seed>/run/            the scorelift run directory
    cells/<method>/<prompt-slug>/s<seed>/stdout.log      its output (of every process it ran in)
    cells/<method>/<prompt-slug>/s<seed>/segments.json   the processes it ran in so far: how each ended, its wall time
    cells/<method>/<prompt-slug>/s<seed>/cell.json       written last, only when the run finished
    cells/<method>/<prompt-slug>/s<seed>/failed.json     when it failed

A cell with a ``cell.json`` whose fingerprint matches is finished and is not run again. A cell
that was stopped (its process exited 75, "stopped, resume me", or the runner killed it while
stopping) and whose run holds a checkpoint is resumed (``scorelift resume=<run>``), so its
compute is not lost: a resumed run trains to the same weights as an uninterrupted one, its
timing.json covers all its steps, and its cell.json's ``cell_wall_s`` is the sum of its
segments. A cell that failed (failed.json) is reported and left alone unless the runner is
asked to retry failures; any other cell starts from scratch (what a failed run left is deleted first).

How the cells are run (each a submitit job whose task, ``cell_task.CellTask``, starts, watches,
stops and records the cell's process) is ``local_cells`` on this machine and ``slurm_cells`` on
a cluster; this module holds what both share: a cell's folder and records, the order cells start
in, what a stopped cell resumes from, and the MPS daemon and GPU sampler of a local run.

GPU utilisation is sampled with nvidia-smi while cells run, where nvidia-smi exists. Cells
sharing one GPU as separate processes time-slice it: one process's kernels run at a time. The
shapes prior's steps are many small kernels, so with ``mps=True`` the runner starts NVIDIA's
Multi-Process Service daemon for the cells (if ``nvidia-cuda-mps-control`` exists), which lets
kernels of different processes run on the GPU at the same time, and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from scorelift.atomic import write_text_atomic
from . import processes
from .spec import Cell
from scorelift.errors import EXIT_STOPPED, RunDirInUse
from scorelift.run_lock import check_not_in_use

# Each cell is one scorelift run in its own process: the installed package's entry point.
LAUNCH = [sys.executable, "-m", "scorelift"]
DEFAULT_STOP_GRACE_S = 60.0  # for a stopped cell to finish its step, write its checkpoint and exit
POLL_S = 0.2  # how often the runner looks at its cells (a stop signal wakes it at once)
SEGMENTS = "segments.json"


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


# ------------------------------------------------------------------------------ a cell's records
def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def has_checkpoint(run: Path) -> bool:
    """Whether a run directory holds a checkpoint to resume from (the run picks the newest
    readable one itself)."""
    folder = run / "checkpoints"
    return (folder / "last.ckpt").is_file() or any(folder.glob("step_*.ckpt"))


def checkpoint_step(run: Path) -> int | None:
    """The global step of the run's last.ckpt (checked whole, tensors not loaded); None if unreadable."""
    try:
        from scorelift.outputs.checkpoint import read_step  # imports torch: only when a cell was stopped

        return read_step(run / "checkpoints" / "last.ckpt")
    except Exception:  # noqa: BLE001  (only for a message: missing, damaged or foreign, say nothing)
        return None


def last_invocation_status(run: Path) -> str | None:
    """How the run's last process ended by its own account (run_info.json): finished, stopped,
    failed, write failed; None when it did not say (it was killed, or never started)."""
    info = read_json(run / "run_info.json") or {}
    invocations = info.get("invocations") or [{}]
    return invocations[-1].get("status")


def resumable_segments(out: Path, cell: Cell) -> list[dict] | None:
    """The segments (processes) the cell ran in so far, if it was stopped and can be resumed;
    None when it is to start from scratch.

    Resumable: its segments.json is of this cell (same fingerprint), the last segment ended
    stopped (exit 75, or killed while the runner was stopping) and the run holds a checkpoint. A
    segment the runner could not close (the runner itself was killed; its cells then got
    SIGTERM, see ``processes.die_with_runner``) counts as stopped when the run says so in
    run_info.json; its wall time is taken up to the last write of stdout.log."""
    folder = cell_dir(out, cell)
    record = read_json(folder / SEGMENTS) or segments_of_an_earlier_runner(folder)
    if not record or record.get("fingerprint") != cell.fingerprint or not record.get("segments"):
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
    """The one segment of a cell that a runner without segments.json recorded as failed with exit
    75 (stopped by a signal, e.g. the terminal's Ctrl+C): resumable like any stopped cell."""
    failed = read_json(folder / "failed.json") or {}
    if failed.get("returncode") != EXIT_STOPPED or "cell_wall_s" not in failed:
        return None
    return {"fingerprint": failed.get("fingerprint"), "segments": [{
        "how": "start", "command": failed.get("command"), "outcome": "stopped", "returncode": EXIT_STOPPED,
        "wall_s": failed["cell_wall_s"], "note": "stopped (exit 75)"}]}


def cell_state(out: Path, cell: Cell) -> str:
    """finished, stopped (to be resumed), failed, or not run: what the next invocation finds."""
    if is_finished(out, cell):
        return "finished"
    if resumable_segments(out, cell) is not None:
        return "stopped"
    return "failed" if (cell_dir(out, cell) / "failed.json").is_file() else "not run"


def cells_to_run(out: Path, cells: list[Cell], retry_failed: bool, log) -> list[Cell]:
    """The unfinished cells of ``cells``, without those that failed earlier unless
    ``retry_failed`` (a failure is looked at before it costs compute again)."""
    unfinished = [c for c in cells if not is_finished(out, c)]
    failed = [c for c in unfinished if cell_state(out, c) == "failed"]
    if failed and not retry_failed:
        log(f"{len(failed)} cell(s) failed earlier and are not run again (--retry-failed runs them): "
            + "; ".join(f"{c.method} | {c.prompt} | seed {c.seed}: {cell_dir(out, c) / 'stdout.log'}" for c in failed))
        return [c for c in unfinished if c not in failed]
    return unfinished


# A cell stops with a checkpoint on SIGUSR2 too: SLURM sends the signal it was asked for ahead of a
# time limit (submitit asks for SIGUSR2) to every process of the job step, the cell included.
CELL_STOP_SIGNALS = "trainer.stop_signals=[SIGTERM,SIGUSR1,SIGINT,SIGUSR2]"


def fresh_command(folder: Path, cell: Cell) -> list[str]:
    return [*LAUNCH, *cell.overrides, *cell.prompt_overrides(), f"seed={cell.seed}",
            f"hydra.run.dir={folder / 'run'}", "trainer.progress_bar=false", CELL_STOP_SIGNALS]


def resume_command(folder: Path) -> list[str]:
    """``resume=`` re-applies the run's saved overrides (the cell's), so nothing else is needed."""
    return [*LAUNCH, f"resume={folder / 'run'}"]


# ------------------------------------------------------------------------------ a cell's process
@dataclass
class RunningCell:
    """A cell's process and what the runner knows of it."""

    cell: Cell
    proc: subprocess.Popen
    log: IO
    segments: list[dict]  # earlier segments, then this one (open: no "outcome" yet)
    started: float  # time.perf_counter() at the start of this segment
    killed: str | None = None  # why it was sent SIGKILL (the grace period ran out, a second signal, ...)


def launch(out: Path, cell: Cell, env: dict) -> RunningCell:
    """Start the cell's process: resume it if it was stopped (``resumable_segments``), else from
    scratch in a clean folder (what a failed, foreign or uncheckpointed run left is deleted, so no
    file of the cell mixes two runs). segments.json records the segment before the process starts."""
    folder = cell_dir(out, cell)
    earlier = resumable_segments(out, cell)
    if earlier is None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        earlier, cmd, mode = [], fresh_command(folder, cell), "w"
    else:
        cmd, mode = resume_command(folder), "a"
        (folder / "failed.json").unlink(missing_ok=True)  # an earlier runner's record of the stop
    segment = {"how": "resume" if earlier else "start", "command": cmd[1:], "started": time.time()}
    segments = [*earlier, segment]
    write_json_atomic(folder / SEGMENTS, {"fingerprint": cell.fingerprint, "segments": segments})
    log = open(folder / "stdout.log", mode)
    if earlier:
        log.write(f"\n[scorelift-bench] resuming the stopped run (segment {len(segments)}): {' '.join(cmd[1:])}\n")
        log.flush()
    try:
        proc = processes.start_process(cmd, log, env)
    except BaseException:
        log.close()
        raise
    return RunningCell(cell, proc, log, segments, time.perf_counter())


def outcome_of(returncode: int, killed: str | None, runner_stopping: bool) -> str:
    """finished (exit 0), stopped (exit 75: checkpoint written; or ended by a signal while the
    runner was stopping, a SIGKILL after the grace period included) or failed (anything else)."""
    if returncode == 0:
        return "finished"
    if returncode == EXIT_STOPPED or killed or (returncode < 0 and runner_stopping):
        return "stopped"
    return "failed"


def settle(out: Path, running: RunningCell, runner_stopping: bool) -> dict:
    """Record a cell whose process has ended (and been reaped): close its segment in
    segments.json; then cell.json (finished: written last, only then), failed.json (the next
    invocation starts it from scratch), or nothing more (stopped: the next one resumes it).
    Returns the cell's record (status ok, stopped or failed)."""
    cell, folder, rc = running.cell, cell_dir(out, running.cell), running.proc.returncode
    running.log.close()
    outcome = outcome_of(rc, running.killed, runner_stopping)
    segments = [*running.segments[:-1], {**running.segments[-1], "outcome": outcome, "returncode": rc,
                                          "wall_s": round(time.perf_counter() - running.started, 2)}]
    if outcome == "stopped":
        segments[-1]["note"] = stop_note(rc, running.killed, folder / "run")
    record = {
        "method": cell.method, "prompt": cell.prompt, "seed": cell.seed, "fingerprint": cell.fingerprint,
        "command": segments[0]["command"], "returncode": rc,
        "cell_wall_s": round(sum(s["wall_s"] for s in segments), 2),  # every process of the cell
        "status": {"finished": "ok", "stopped": "stopped", "failed": "failed"}[outcome],
        "resumed": len(segments) - 1, "segments": segments,
    }
    write_json_atomic(folder / SEGMENTS, {"fingerprint": cell.fingerprint, "segments": segments})
    if outcome == "finished":
        write_json_atomic(folder / "cell.json", record)
        (folder / SEGMENTS).unlink(missing_ok=True)  # cell.json holds them now
    elif outcome == "failed":
        (folder / "failed.json").write_text(json.dumps(record, indent=2))
    return record


def stop_note(returncode: int, killed: str | None, run: Path) -> str:
    """How a stopped cell's process ended, in words."""
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


def describe_stopped(out: Path, cell: Cell, record: dict) -> str:
    """One line for a stopped cell: how it ended and what the next invocation does with it."""
    cell_text = f"{cell.method} | {cell.prompt} | seed {cell.seed}"
    run = cell_dir(out, cell) / "run"
    last = record["segments"][-1]
    how = last.get("note", f"exit {record['returncode']}")
    if not has_checkpoint(run):
        return f"stopped: {cell_text}: {how}, before its first checkpoint; the next run starts it again."
    step = checkpoint_step(run)
    at = f"step {step}" if step is not None else "its last checkpoint"
    return f"stopped: {cell_text}: {how}, checkpoint at {at}; the next run resumes it from there."


def wait_for_earlier_processes(out: Path, cells: list[Cell], timeout: float, stop: processes.StopRequests,
                               log=print) -> list[Cell]:
    """``cells`` less those whose run directory is still held by a live process (the cell of an
    earlier runner that was killed, still writing its checkpoint), after waiting up to ``timeout``
    s for them; a stop signal ends the wait. Deleting or resuming a run that is still running
    would mix two writers."""
    def busy(cell: Cell) -> bool:
        run = cell_dir(out, cell) / "run"
        try:
            check_not_in_use(run)
        except RunDirInUse:
            return True
        return False

    held = [c for c in cells if (cell_dir(out, c) / "run" / ".lock").is_file() and busy(c)]
    if held:
        log(f"{len(held)} cell(s) still in use by a process of an earlier run (stopping?): waiting up to {timeout:g} s.")
    deadline = time.monotonic() + timeout
    while held and time.monotonic() < deadline and not stop.requested:
        stop.wait(POLL_S)
        held = [c for c in held if busy(c)]
    for cell in held:
        log(f"skipped: {cell.method} | {cell.prompt} | seed {cell.seed}: {cell_dir(out, cell) / 'run'} is still in use "
            f"by another process; run the same command again once it has ended.")
    return [c for c in cells if c not in held]


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
    from scorelift.shapes_world.evaluate import parse_target

    if any(parse_target(p) for p in prompts):
        from scorelift.shapes_world.evaluate import evaluation_truth

        evaluation_truth()


# ------------------------------------------------------------------------------ what the driver prints
def cell_line(out: Path, cell: Cell, record: dict, done: int, total: int) -> str:
    """The driver's line for a cell whose process has ended: its quality, or why it stopped or failed."""
    if record["status"] == "stopped":
        return describe_stopped(out, cell, record)
    head = f"[{done}/{total}] {cell.method} | {cell.prompt} | seed {cell.seed}: "
    if record["status"] != "ok":
        return head + f"FAILED (exit {record['returncode']}, see {cell_dir(out, cell) / 'stdout.log'}) ({record['cell_wall_s']:.0f} s)"
    metrics = read_json(cell_dir(out, cell) / "run" / "metrics.json") or {}
    result = f"IoU {metrics['iou']:.3f} id {metrics['identification']:.2f} " if "iou" in metrics else ""
    parts = f" in {record['resumed'] + 1} segments" if record["resumed"] else ""
    return head + f"{result}({record['cell_wall_s']:.0f} s{parts})"


def close_abandoned(out: Path, cell: Cell, stopping: bool, why: str) -> dict:
    """The record of a cell whose job ended without returning it (the job was killed, or its task
    raised): its open segment is closed from the files, as stopped when the driver was stopping
    (the next invocation resumes it from its last periodic checkpoint) and as failed otherwise; a
    cell whose process never began is stopped when the driver was stopping, else failed."""
    folder = cell_dir(out, cell)
    if is_finished(out, cell):  # it finished; only the job's result went missing
        return read_json(folder / "cell.json")
    segments = [dict(s) for s in ((read_json(folder / SEGMENTS) or {}).get("segments") or [])]
    if segments and "outcome" not in segments[-1]:
        try:
            ended = (folder / "stdout.log").stat().st_mtime
        except OSError:
            ended = time.time()
        segments[-1].update(outcome="stopped" if stopping else "failed", returncode=None,
                            wall_s=round(max(0.0, ended - segments[-1]["started"]), 2), note=f"killed ({why})")
        write_json_atomic(folder / SEGMENTS, {"fingerprint": cell.fingerprint, "segments": segments})
    # A job stopped before its cell's process began (a stop that came as it started) left no
    # segment: not started, not failed; the next invocation runs it.
    outcome = segments[-1]["outcome"] if segments else "stopped" if stopping else "failed"
    record = {
        "method": cell.method, "prompt": cell.prompt, "seed": cell.seed, "fingerprint": cell.fingerprint,
        "command": segments[0]["command"] if segments else None,
        "returncode": segments[-1].get("returncode") if segments else None,
        "cell_wall_s": round(sum(s.get("wall_s", 0.0) for s in segments), 2),
        "status": {"finished": "ok", "stopped": "stopped"}.get(outcome, "failed"),
        "resumed": max(0, len(segments) - 1), "segments": segments, "note": why,
    }
    if record["status"] == "failed":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "failed.json").write_text(json.dumps(record, indent=2))
    return record
