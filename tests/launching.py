"""Helpers for tests that run ``launch.py`` as a real process: start a short run on the tiny
pipeline, wait until it has checkpointed a step, compare checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from scorelift.outputs.checkpoint import checkpoint_path, read_step
from tests.run.test_system import small_run_overrides

REPO = Path(__file__).resolve().parent.parent
LATENT = 8  # the conftest tiny pipeline's latent size


def env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)


def run_args(pipeline: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    """launch.py's command line for an sjc + paas run of ``steps`` tiny steps, a checkpoint every 2."""
    over = [o for o in small_run_overrides(pipeline, LATENT, "sjc", "paas", steps) if not o.startswith("trainer.checkpoint_every")]
    return [sys.executable, str(REPO / "launch.py"), *over, "trainer.checkpoint_every=2", "trainer.log_every_n_steps=1",
            f"hydra.run.dir={run_dir}", *extra]


def launch(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600, **kw)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, at_least: int, timeout: float = 180) -> int:
    """Poll until the run's last.ckpt holds step ``at_least`` or later; returns that step. Fails
    if the process ended first (the run was too short to be caught mid-way)."""
    deadline = time.time() + timeout
    ckpt = checkpoint_path(run_dir)
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before step {at_least}: {proc.stderr.read()[-2000:]}")
        if ckpt.is_file():
            try:
                step = read_step(ckpt)
                if step >= at_least:
                    return step
            except Exception:  # noqa: BLE001  (being replaced this instant: look again)
                pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {at_least} within {timeout} s")


def state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = state(a), state(b)
    return sa["global_step"] == sb["global_step"] and sa["state_dict"].keys() == sb["state_dict"].keys() and all(
        torch.equal(sa["state_dict"][k], sb["state_dict"][k]) for k in sa["state_dict"])


def final_step(run_dir: Path) -> int:
    return read_step(checkpoint_path(run_dir))


def error_paragraph(stderr) -> str:
    """The one ``scorelift: error:`` line, which must end the output (one paragraph, no
    traceback); ``stderr``: the text, or a result dict holding it."""
    text = stderr["stderr"] if isinstance(stderr, dict) else stderr
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("scorelift: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], text[-3000:]
    assert "Traceback" not in text
    return errors[0]
