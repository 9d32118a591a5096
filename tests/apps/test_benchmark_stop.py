"""Stopping the benchmark runner with real signals: SIGTERM and SIGINT stop its cells with a
checkpoint and exit 75, the same command then resumes them to the weights of an uninterrupted
run, a cell killed at the end of --stop-grace stays resumable, and a runner killed with SIGKILL
leaves no cell running (Linux: the parent-death signal).

The cells are tiny (the random 8 x 8 Stable Diffusion pipeline, a 12^3 voxel grid) but long
enough to be caught mid-run: 150 steps, a checkpoint every 5. Every process a cell starts is in
the cell's own session, so "nothing survives" is checked on whole sessions, from /proc."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scorelift.benchmark import cells
from scorelift.benchmark import spec as spec_mod
from scorelift.jobs import folder as job_folder
from scorelift.jobs import lifecycle, processes

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
STEPS = 150
LINUX = sys.platform.startswith("linux")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")


@pytest.fixture(scope="module")
def preset(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """Two methods, one prompt without ground truth (no evaluation), one seed."""
    size = json.loads((tiny_pipeline_dir / "unet" / "config.json").read_text())["sample_size"]
    common = ["prior=stable-diffusion", f"prior.model={tiny_pipeline_dir}", "device=cpu", "geometry.resolution=12",
              "geometry.bbox_radius=1.0", "renderer.step_size=0.04", f"data.height={size}", f"data.width={size}",
              "data.batch_size=1", f"system.views.resolution={size}", "system.views.n_frames=4",
              "system.validation_every=100000", "trainer.checkpoint_every=5"]
    path = tmp_path_factory.mktemp("stop-preset") / "tiny.yaml"
    path.write_text(json.dumps({
        "description": "two tiny cells, long enough to be stopped", "prompts": ["a hamburger"], "seeds": [0],
        "steps": STEPS, "eval_every": 0, "common": common,
        "methods": {"paas": ["system=sjc", "guidance=paas"], "sds": ["system=dreamfusion", "guidance=sds"]},
    }))  # JSON is YAML
    return path


def command(preset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scorelift.benchmark", str(preset), "--out", str(out), "--workers", "2",
            "--threads-per-run", "1", *extra]


SEEN_CELLS: set[int] = set()  # the sessions of the cells a test saw (a cell's PID is its session's id)


@pytest.fixture
def reap_sessions():
    """After the test: kill whatever a failed test left running in the cells' sessions."""
    yield
    for sid in SEEN_CELLS:
        for member in session_members(sid):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass
    SEEN_CELLS.clear()


@pytest.fixture
def start_runner(reap_sessions):
    """Start runners in sessions of their own; a runner a failed test left running is killed."""
    started: list[subprocess.Popen] = []

    def start(cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def session_members(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``: a cell and everything it started."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def cell_pids(out: Path) -> list[int]:
    """The PIDs of the cells' scorelift processes, from the lock file each run holds."""
    pids = [json.loads(lock.read_text())["pid"] for lock in sorted(out.glob("cells/*/*/s0/run/.lock"))]
    SEEN_CELLS.update(pids)
    return pids


def wait_for_checkpoints(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``n`` cells have written checkpoints/last.ckpt (so they are training)."""
    deadline = time.monotonic() + timeout
    while len(list(out.glob("cells/*/*/s0/run/checkpoints/last.ckpt"))) < n:
        assert proc.poll() is None, f"the runner ended early:\n{proc.communicate()}"
        assert time.monotonic() < deadline, f"no {n} checkpoints after {timeout} s"
        time.sleep(0.1)
    assert not list(out.glob("cells/*/*/s0/job.json")), "a cell finished before it could be stopped; raise STEPS"


def wait_until_gone(sids: list[int], timeout: float) -> list[int]:
    """The sessions' processes still alive after up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for sid in sids for pid in session_members(sid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def last_invocation(cell: Path) -> dict:
    return json.loads((cell / "run" / "run_info.json").read_text())["invocations"][-1]


def weights(cell: Path) -> dict:
    return torch.load(cell / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def the_cell(preset: Path, method: str) -> spec_mod.Cell:
    return next(c for c in spec_mod.expand(spec_mod.load_spec(str(preset))) if c.method == method)


@pytest.fixture(scope="module")
def uninterrupted(preset, tmp_path_factory):
    """The paas cell run through without a stop, started at once in the background (it runs while
    the test that needs it stops and resumes its own); call it for the cell's folder."""
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.Popen(command(preset, out, "--methods", "paas"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, start_new_session=True)

    def finished() -> Path:
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output
        return out / "cells" / "paas" / "a_hamburger" / "s0"

    yield finished
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@needs_proc
def test_sigterm_stops_every_cell_and_the_same_command_resumes_them(preset, tmp_path, start_runner, uninterrupted):
    out = tmp_path / "bench"
    proc = start_runner(command(preset, out))
    wait_for_checkpoints(out, 2, proc)
    pids = cell_pids(out)
    assert len(pids) == 2
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stdout + stderr
    assert wait_until_gone(pids, 0) == []  # the runner waited for its cells: nothing of them is left
    stopped_lines = [line for line in stdout.splitlines() if line.startswith("stopped: ")]
    assert len(stopped_lines) == 2 and all("stopped by SIGTERM (exit 75), checkpoint at step" in line
                                           and "the next run resumes it" in line for line in stopped_lines), stdout
    assert "stopped by SIGTERM: 2 cell(s) stopped, 0 not started, 0 of 2 finished" in stderr
    for method in ("paas", "sds"):
        cell = out / "cells" / method / "a_hamburger" / "s0"
        assert not (cell / "job.json").exists() and not (cell / "failed.json").exists()
        assert last_invocation(cell)["status"] == "stopped" and last_invocation(cell)["signal"] == "SIGTERM"
        (segment,) = json.loads((cell / "segments.json").read_text())["segments"]
        assert segment["outcome"] == "stopped" and segment["returncode"] == 75
        assert cells.cell_state(out, the_cell(preset, method)) == "stopped"
    assert not (out / "results.csv").exists() and not (out / "benchmark_info.json").exists()  # no report of a cut run

    again = start_runner(command(preset, out))
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stdout + stderr
    assert "0 of 2 jobs already finished; running 2 (2 stopped earlier: resumed)" in stdout
    rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv", newline=""))}
    for method in ("paas", "sds"):
        cell = out / "cells" / method / "a_hamburger" / "s0"
        record = json.loads((cell / "job.json").read_text())
        assert record["status"] == "ok" and record["resumed"] == 1
        assert [(s["how"], s["outcome"]) for s in record["segments"]] == [("start", "stopped"), ("resume", "finished")]
        assert record["wall_s"] == pytest.approx(sum(s["wall_s"] for s in record["segments"]), abs=0.02)
        assert float(rows[method]["cell_wall_s"]) == record["wall_s"]
        invocations = json.loads((cell / "run" / "run_info.json").read_text())["invocations"]
        assert [i["status"] for i in invocations] == ["stopped", "finished"]
        timing = json.loads((cell / "run" / "timing.json").read_text())
        assert timing["steps_timed"] == STEPS - 5  # both processes' steps, less the 5 warm-up steps
        assert not (cell / "segments.json").exists()

    resumed, straight = weights(out / "cells" / "paas" / "a_hamburger" / "s0"), weights(uninterrupted())
    assert resumed["global_step"] == straight["global_step"] == STEPS
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    assert all(torch.equal(resumed["state_dict"][k], straight["state_dict"][k]) for k in straight["state_dict"])


@needs_proc
def test_sigint_stops_like_sigterm(preset, tmp_path, start_runner):
    """Ctrl+C: the cells get one SIGTERM from the runner (not the terminal's SIGINT as well, which
    they would take for "stop without a checkpoint"), and the runner exits 75."""
    out = tmp_path / "bench"
    proc = start_runner(command(preset, out, "--methods", "paas"))
    wait_for_checkpoints(out, 1, proc)
    pids = cell_pids(out)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: to the runner's whole process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stdout + stderr
    assert "Stopping (SIGINT)" in stdout and "stopped by SIGINT: 1 cell(s) stopped" in stderr
    assert wait_until_gone(pids, 0) == []
    cell = out / "cells" / "paas" / "a_hamburger" / "s0"
    assert not (cell / "job.json").exists()
    assert last_invocation(cell)["status"] == "stopped" and last_invocation(cell)["signal"] == "SIGTERM"
    assert cells.cell_state(out, the_cell(preset, "paas")) == "stopped"


@needs_proc
def test_a_cell_killed_when_the_grace_period_ends_stays_resumable(preset, tmp_path, start_runner):
    """--stop-grace 0: the cell gets SIGKILL right after SIGTERM. Its run cannot say it stopped,
    but the runner recorded that it killed it while stopping, so the next run resumes it from its
    last periodic checkpoint."""
    out = tmp_path / "bench"
    proc = start_runner(command(preset, out, "--methods", "paas", "--stop-grace", "0"))
    wait_for_checkpoints(out, 1, proc)
    pids = cell_pids(out)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stdout + stderr
    assert wait_until_gone(pids, 0) == []
    assert "stopped: paas | a hamburger | seed 0: killed (SIGKILL: still running 0 s after the stop signal), " \
           "checkpoint at step" in stdout, stdout
    cell = out / "cells" / "paas" / "a_hamburger" / "s0"
    assert "status" not in last_invocation(cell)  # killed: the run itself recorded nothing
    assert cells.cell_state(out, the_cell(preset, "paas")) == "stopped"


@needs_proc
@pytest.mark.skipif(not LINUX, reason="the parent-death signal is Linux's")
def test_a_runner_killed_with_sigkill_leaves_no_cell_running(preset, tmp_path, start_runner):
    """The runner cannot act on SIGKILL; the kernel sends its cells SIGTERM, so they still stop
    with a checkpoint, and the next run of the command would resume them."""
    out = tmp_path / "bench"
    proc = start_runner(command(preset, out, "--methods", "paas"))
    wait_for_checkpoints(out, 1, proc)
    pids = cell_pids(out)
    proc.kill()
    proc.communicate()
    assert wait_until_gone(pids, 60) == [], "a cell kept running after its runner was killed"
    cell = out / "cells" / "paas" / "a_hamburger" / "s0"
    assert last_invocation(cell)["status"] == "stopped" and last_invocation(cell)["signal"] == "SIGTERM"
    assert not (cell / "job.json").exists()
    segments = job_folder.resumable_segments(out, the_cell(preset, "paas").job)  # what the next run resumes from
    assert segments is not None and segments[-1]["outcome"] == "stopped" and segments[-1]["wall_s"] > 0


@needs_proc
def test_the_stop_grace_ends_with_sigkill_for_the_whole_group(tmp_path, reap_sessions):
    """A process that ignores the stop signal, and the child it started, are both gone after
    ``kill_group``: the SIGKILL at the end of --stop-grace reaches a cell's helpers too."""
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('ready', flush=True); "
              "time.sleep(60)")
    log = open(tmp_path / "log", "w")
    proc = processes.start_process([sys.executable, "-c", script], log, dict(os.environ))
    SEEN_CELLS.add(proc.pid)
    deadline = time.monotonic() + 30
    while "ready" not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.getpgid(proc.pid) == proc.pid and os.getsid(proc.pid) == proc.pid  # a session of its own
    assert len(session_members(proc.pid)) == 2
    processes.signal_process(proc)
    time.sleep(0.5)
    assert not processes.has_exited(proc)  # it ignores SIGTERM
    processes.kill_group(proc)
    assert wait_until_gone([proc.pid], 10) == []
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    log.close()


def test_which_cells_resume_and_which_start_again(tmp_path):
    """The next run's decision for each record a cell can leave (the files as runs write them)."""
    cell = spec_mod.Cell("sds", "a red cube", 0, ("guidance=sds",))
    folder = tmp_path / "cells" / cell.key
    (folder / "run" / "checkpoints").mkdir(parents=True)

    def leave(segments=None, failed=None, run_status="stopped", checkpoint=True, fingerprint=cell.fingerprint):
        for name in ("segments.json", "failed.json", "run/checkpoints/last.ckpt"):
            (folder / name).unlink(missing_ok=True)
        if segments is not None:
            (folder / "segments.json").write_text(json.dumps({"fingerprint": fingerprint, "segments": segments}))
        if failed is not None:
            (folder / "failed.json").write_text(json.dumps({"fingerprint": fingerprint, "cell_wall_s": 9.5, **failed}))
        if checkpoint:
            (folder / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
        (folder / "run" / "run_info.json").write_text(json.dumps({"invocations": [{"status": run_status}]}))
        (folder / "stdout.log").write_text("")
        return job_folder.resumable_segments(tmp_path, cell.job)

    started = time.time() - 30
    stopped = {"how": "start", "started": started, "outcome": "stopped", "returncode": 75, "wall_s": 12.0}
    assert leave([stopped]) == [stopped]
    assert leave([{**stopped, "outcome": "failed", "returncode": 1}]) is None  # a failure starts again
    assert leave([stopped], checkpoint=False) is None  # stopped before its first checkpoint
    assert leave([stopped], fingerprint="another") is None  # the cell's overrides changed since
    open_segment = {"how": "start", "started": started}  # the runner died before the process did
    (segment,) = leave([open_segment])
    assert segment["outcome"] == "stopped" and 25 < segment["wall_s"] < 60  # up to stdout.log's last write
    assert leave([open_segment], run_status=None) is None  # killed: nothing says it stopped cleanly
    # what a runner without segments.json left for a cell stopped by Ctrl+C
    (segment,) = leave(failed={"returncode": 75})
    assert segment["outcome"] == "stopped" and segment["wall_s"] == 9.5
    assert leave(failed={"returncode": 1}) is None
    assert lifecycle.outcome_of(-9, "the grace period ran out", True) == "stopped"
    assert lifecycle.outcome_of(-9, None, False) == "failed"  # killed by someone else, not while stopping
    assert lifecycle.outcome_of(2, None, True) == "failed" and lifecycle.outcome_of(0, None, True) == "finished"


def test_a_job_stopped_before_its_cell_began_is_stopped_not_failed(tmp_path):
    """A job that a stop ended before it started its cell's process leaves no segment: while the
    runner is stopping, that cell is recorded as stopped (no failed.json, so the next invocation
    runs it without --retry-failed); when nothing was stopping, as failed."""
    cell = spec_mod.Cell("sds", "a red cube", 0, ("guidance=sds",))
    folder = tmp_path / "cells" / cell.key
    record = lifecycle.close_abandoned(tmp_path, cell.job, True, "its task ended without a result (UncompletedJobError)")
    assert record["status"] == "stopped" and record["segments"] == [] and not (folder / "failed.json").exists()
    assert job_folder.jobs_to_run(tmp_path, [cell.job], False, lambda line: None) == [cell.job]
    record = lifecycle.close_abandoned(tmp_path, cell.job, False, "its task ended without a result (UncompletedJobError)")
    assert record["status"] == "failed" and (folder / "failed.json").is_file()
    assert job_folder.jobs_to_run(tmp_path, [cell.job], False, lambda line: None) == []  # failed: only with --retry-failed


def test_a_cell_still_held_by_a_process_is_waited_for_not_deleted(tmp_path):
    """A run directory whose lock is held (the cell of a killed runner, still writing its
    checkpoint) is waited for, and left alone if it stays held."""
    import threading

    from scorelift.run_lock import RunLock

    cell = spec_mod.Cell("sds", "a red cube", 0, ("guidance=sds",))
    run = tmp_path / "cells" / cell.key / "run"
    run.mkdir(parents=True)
    lines: list[str] = []
    stop = processes.StopRequests()  # not entered: no handlers, never requested
    with RunLock(run):
        assert job_folder.wait_for_earlier_processes(tmp_path, [cell.job], 0.3, stop, lines.append) == []
    assert "still in use" in lines[0] and "skipped: sds | a red cube | seed 0" in lines[-1]
    assert run.is_dir()
    lock = RunLock(run).__enter__()
    threading.Timer(0.3, lock.__exit__).start()
    assert job_folder.wait_for_earlier_processes(tmp_path, [cell.job], 10, stop, lines.append) == [cell.job]


def test_a_stop_delivered_twice_at_once_counts_once_and_a_later_one_twice():
    """GNU timeout sends SIGTERM to the runner and then to its process group: one stop, two
    signals. Only a stop more than SAME_STOP_S after the previous one hurries the cells."""
    with processes.StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        stop.wait(0.05)
        assert (stop.name, stop.count) == ("SIGTERM", 1)
        time.sleep(processes.SAME_STOP_S + 0.1)
        os.kill(os.getpid(), signal.SIGINT)
        stop.wait(0.05)
        assert (stop.name, stop.count) == ("SIGTERM", 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
