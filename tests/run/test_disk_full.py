"""Full disks, with real runs of launch.py: a run that cannot fit refuses to start, and a write
that still finds no space stops the run with one paragraph (exit 74), removes its partial file
and leaves the last checkpoint resumable.

Two ways to run out of room, both real: a small tmpfs (mounted here; needs root and a kernel
that lets this process mount, otherwise those cases are skipped), and this process's file-size
limit (RLIMIT_FSIZE, which any Linux process may lower for its child: set with ``prlimit`` on the
running child, it makes the next large write fail with EFBIG). The file-size-limit cases always
run.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from scorelift.errors import EXIT_BAD_INPUT, EXIT_WRITE_FAILED
from scorelift.outputs.checkpoint import checkpoint_path, read_step
from tests.launching import REPO, env, error_paragraph, launch, run_args, start, wait_for_checkpoint

pytestmark = pytest.mark.subprocess

BIG_GRID = "geometry.resolution=48"  # 48^3 x 5 float32 = 2.2 MB of parameters, ~6.6 MB a checkpoint
MID_GRID = "geometry.resolution=24"  # ~0.8 MB a checkpoint


@pytest.fixture
def small_volume(tmp_path):
    """A factory for tmpfs volumes of a given size, unmounted afterwards; skips where mounting
    is not allowed."""
    mounted = []

    def make(size: str) -> Path:
        point = tmp_path / f"vol-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); the file-size-limit cases cover this")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def temp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if ".tmp-" in p.name]


def test_a_run_larger_than_its_volume_refuses_to_start(small_volume, tiny_pipeline_dir):
    volume = small_volume("3m")
    run_dir = volume / "run"
    done = launch(run_args(tiny_pipeline_dir, run_dir, 100, BIG_GRID))
    assert done.returncode == EXIT_BAD_INPUT
    message = error_paragraph(done.stderr)
    assert "would write about" in message and "has only" in message and "trainer.keep_checkpoints=1" in message
    assert list(volume.iterdir()) == []  # nothing was written


def test_a_checkpoint_over_the_file_size_limit_refuses_to_start(tiny_pipeline_dir, tmp_path):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    run_dir = tmp_path / "run"
    done = subprocess.run(run_args(tiny_pipeline_dir, run_dir, 100, BIG_GRID), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert done.returncode == EXIT_BAD_INPUT
    message = error_paragraph(done.stderr)
    assert "file-size limit" in message and "1.0 MiB" in message
    assert not run_dir.exists()


def stopped_for_space(proc, run_dir: Path, checkpointed: int, words: list[str]) -> None:
    """The run exited 74 with one paragraph holding ``words``, left no partial file, and its
    checkpoint of step ``checkpointed`` or later is intact."""
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_WRITE_FAILED, err[-3000:]
    message = error_paragraph(err)
    for word in words:
        assert word in message, (word, message)
    assert "is intact" in message and f"resume={run_dir}" in message
    assert temp_files(run_dir) == []
    assert read_step(checkpoint_path(run_dir)) >= checkpointed


def resume_to(run_dir: Path, steps: int) -> None:
    done = launch([sys.executable, "launch.py", f"resume={run_dir}", f"trainer.max_steps={steps}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_step(checkpoint_path(run_dir)) == steps


def test_a_volume_that_fills_up_mid_run_stops_it_resumably(small_volume, tiny_pipeline_dir):
    volume = small_volume("32m")
    run_dir = volume / "run"
    proc = start(run_args(tiny_pipeline_dir, run_dir, 5000, MID_GRID))
    step = wait_for_checkpoint(proc, run_dir, 2)
    filler = volume / "filler"
    with open(filler, "wb") as fh:  # another process takes all but 64 KiB
        try:
            while True:
                fh.write(bytes(1 << 16))
                fh.flush()
        except OSError:
            pass
    # Give back 64 KiB by truncating in place: rewriting the file would first free all of it, and
    # the run could take that space before the rewrite, which then fails for lack of space.
    os.truncate(filler, filler.stat().st_size - (1 << 16))
    stopped_for_space(proc, run_dir, step, ["no space left on the device"])
    filler.unlink()
    resume_to(run_dir, read_step(checkpoint_path(run_dir)) + 4)


def test_a_file_size_limit_reached_mid_run_stops_it_resumably(tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_args(tiny_pipeline_dir, run_dir, 5000, MID_GRID))
    step = wait_for_checkpoint(proc, run_dir, 2)
    size = checkpoint_path(run_dir).stat().st_size
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))
    stopped_for_space(proc, run_dir, step, ["Writing the checkpoint of step", "file-size limit", "the partial file was removed"])
    resume_to(run_dir, read_step(checkpoint_path(run_dir)) + 4)
