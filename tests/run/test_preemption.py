"""Preemption: real runs of launch.py stopped by real signals, then resumed.

SIGTERM, SIGUSR1 and SIGINT (the default trainer.stop_signals) make a run finish its step, write
a checkpoint, record why it stopped and exit 75; the resumed run ends bit-identical to an
uninterrupted one, with the same metrics.csv. A SIGKILL loses at most the rows since the last
checkpoint and leaves no stale lock. A second process on a running run's directory exits 2
naming the holder.
"""

from __future__ import annotations

import csv
import json
import signal
import socket
import sys
import time

import pytest

from scorelift.errors import EXIT_BAD_INPUT, EXIT_STOPPED
from scorelift.outputs.checkpoint import checkpoint_path
from tests.launching import final_step, launch, run_args, same_weights, start, state, wait_for_checkpoint

pytestmark = pytest.mark.subprocess

STEPS = 40


@pytest.fixture(scope="module")
def straight(tiny_pipeline_dir, tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed run is compared with."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    done = launch(run_args(tiny_pipeline_dir, run_dir, STEPS))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def invocations(run_dir) -> list[dict]:
    return json.loads((run_dir / "run_info.json").read_text())["invocations"]


def metric_steps(run_dir) -> list[int]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def steps_on_disk(run_dir) -> list[int]:
    """metric_steps of a file that may be being written this instant (then: what is readable)."""
    try:
        return metric_steps(run_dir)
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_checkpoints_exits_75_and_resumes_bit_identical(sig, straight, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_args(tiny_pipeline_dir, run_dir, STEPS))
    wait_for_checkpoint(proc, run_dir, 4)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    stopped_at = final_step(run_dir)
    assert 4 <= stopped_at < STEPS
    assert f"scorelift: stopped: Stopped by {sig.name} at step {stopped_at}" in err
    assert "Traceback" not in err
    first = invocations(run_dir)[-1]
    assert first["status"] == "stopped" and first["signal"] == sig.name
    assert not (run_dir / "turntable.mp4").exists()  # a stopped run is not a finished one
    assert metric_steps(run_dir) == list(range(stopped_at))  # every row up to the checkpoint was flushed

    resumed = launch([sys.executable, "launch.py", f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same_weights(checkpoint_path(run_dir), checkpoint_path(straight))
    assert (run_dir / "logs" / "metrics.csv").read_text() == (straight / "logs" / "metrics.csv").read_text()
    assert [i["status"] for i in invocations(run_dir)] == ["stopped", "finished"]
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["steps_timed"] == json.loads((straight / "timing.json").read_text())["steps_timed"] == STEPS - 5
    assert (run_dir / "turntable.mp4").is_file()


def test_sigkill_loses_only_the_rows_since_the_checkpoint_and_no_lock_stays(straight, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_args(tiny_pipeline_dir, run_dir, STEPS))
    step = wait_for_checkpoint(proc, run_dir, 6)
    # The checkpoint step's own row is written just after the checkpoint (Lightning logs a step's
    # metrics after its batch-end callbacks; scorelift.outputs.logs): kill after that instant.
    deadline = time.monotonic() + 60
    while step - 1 not in steps_on_disk(run_dir):
        assert time.monotonic() < deadline and proc.poll() is None, "the checkpoint step's row was never flushed"
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    killed_at = final_step(run_dir)  # the checkpoint a SIGKILL leaves is whole
    assert 6 <= killed_at < STEPS
    assert set(range(killed_at)) <= set(metric_steps(run_dir))  # rows up to the checkpoint are on disk
    assert (run_dir / ".lock").is_file()  # the file stays; the kernel released the lock with the process

    resumed = launch([sys.executable, "launch.py", f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same_weights(checkpoint_path(run_dir), checkpoint_path(straight))
    # rows the killed process logged after its checkpoint were dropped and logged again, once
    assert (run_dir / "logs" / "metrics.csv").read_text() == (straight / "logs" / "metrics.csv").read_text()


def test_a_resume_of_a_running_run_exits_2_naming_the_holder(tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_args(tiny_pipeline_dir, run_dir, 2000))
    try:
        wait_for_checkpoint(proc, run_dir, 2)
        second = launch([sys.executable, "launch.py", f"resume={run_dir}"])
        assert second.returncode == EXIT_BAD_INPUT, second.stderr[-3000:]
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith("scorelift: error: ") and "in use by another scorelift process" in message
        assert f"PID {proc.pid} on host {socket.gethostname()}" in message and f"kill -TERM {proc.pid}" in message
        assert len(invocations(run_dir)) == 1  # the second process wrote nothing into the run
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED


def test_twin_launches_on_one_directory_leave_one_run(tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    twins = [start(run_args(tiny_pipeline_dir, run_dir, 30)) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in twins]
    codes = sorted(code for code, _ in results)
    assert codes == [0, EXIT_BAD_INPUT], [err[-2000:] for _, err in results]
    refused = next(err for code, err in results if code == EXIT_BAD_INPUT).strip().splitlines()[-1]
    assert "in use by another scorelift process" in refused or "already holds a run" in refused, refused
    assert len(invocations(run_dir)) == 1 and invocations(run_dir)[0]["status"] == "finished"
    assert state(checkpoint_path(run_dir))["global_step"] == 30


def test_no_stop_signals_leaves_sigterm_its_default(tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_args(tiny_pipeline_dir, run_dir, 2000, "trainer.stop_signals=[]"))
    wait_for_checkpoint(proc, run_dir, 2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM


def test_a_new_run_on_a_finished_one_is_refused_and_the_run_kept(straight, tiny_pipeline_dir):
    before = {p: p.read_bytes() for p in straight.rglob("*") if p.is_file()}
    again = launch(run_args(tiny_pipeline_dir, straight, STEPS))
    assert again.returncode == EXIT_BAD_INPUT
    assert "already holds a run" in again.stderr and f"resume={straight}" in again.stderr
    assert {p: p.read_bytes() for p in straight.rglob("*") if p.is_file()} == before
