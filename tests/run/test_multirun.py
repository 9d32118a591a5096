"""``scorelift -m`` through Hydra's submitit launcher plugin (``hydra/launcher=submitit_local``):
each combination a submitit job in ``<hydra.sweep.dir>/<job>``, and a sweep folder that resumes.
The same sweep on a real SLURM cluster, preempted, is in test_slurm.py."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.launching import REPO, error_paragraph, final_step, launch, same_weights
from tests.run.test_system import small_run_overrides

pytestmark = pytest.mark.subprocess

STEPS = 6


def sweep_args(pipeline, sweep_dir, seeds: str, launcher: str = "submitit_local", steps: int = STEPS) -> list[str]:
    """launch.py -m over ``seeds`` of a tiny sjc + paas run, as submitit jobs."""
    return [sys.executable, str(REPO / "launch.py"), "-m", f"hydra/launcher={launcher}", f"seed={seeds}",
            *small_run_overrides(pipeline, 8, "sjc", "paas", steps), f"hydra.sweep.dir={sweep_dir}"]


@pytest.fixture(scope="module")
def sweep(tiny_pipeline_dir, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "seeds"
    done = launch(sweep_args(tiny_pipeline_dir, sweep_dir, "0,1"))
    return sweep_dir, done


def test_a_submitit_local_sweep_runs_each_combination_as_a_job(sweep):
    sweep_dir, done = sweep
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"job 0: finished {sweep_dir / '0'}" in done.stdout
    assert f"job 1: finished {sweep_dir / '1'}" in done.stdout
    assert f"sweep {sweep_dir}: 2 of 2 runs finished" in done.stdout
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs ran them
    for job in (0, 1):
        run_dir = sweep_dir / str(job)
        assert final_step(run_dir) == STEPS
        assert f"seed={job}" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        info = json.loads((run_dir / "run_info.json").read_text())
        assert info["seed"] == job and info["invocations"][-1]["status"] == "finished"
        assert (run_dir / "turntable.mp4").is_file() and not (run_dir / "scorelift.log").exists()
    assert not same_weights(sweep_dir / "0" / "checkpoints" / "last.ckpt", sweep_dir / "1" / "checkpoints" / "last.ckpt")


def test_the_same_sweep_folder_again_skips_the_finished_runs(sweep, tiny_pipeline_dir):
    sweep_dir, _ = sweep
    before = [(sweep_dir / str(j) / "checkpoints" / "last.ckpt").stat().st_mtime_ns for j in (0, 1)]
    again = launch(sweep_args(tiny_pipeline_dir, sweep_dir, "0,1"))
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"job 0: skipped  {sweep_dir / '0'}  (finished before)" in again.stdout
    assert f"sweep {sweep_dir}: 2 of 2 runs finished" in again.stdout
    assert [(sweep_dir / str(j) / "checkpoints" / "last.ckpt").stat().st_mtime_ns for j in (0, 1)] == before


def test_a_changed_sweep_in_an_old_folder_is_refused_before_anything_runs(sweep, tiny_pipeline_dir):
    sweep_dir, _ = sweep
    jobs_before = sorted((sweep_dir / ".submitit").iterdir())
    refused = launch(sweep_args(tiny_pipeline_dir, sweep_dir, "0,2"))
    assert refused.returncode == 2
    message = error_paragraph(refused.stderr)
    assert f"{sweep_dir / '1'} holds a run of other overrides (seed=1 " in message
    assert "than job 1 of this sweep (seed=2 " in message
    assert sorted((sweep_dir / ".submitit").iterdir()) == jobs_before  # nothing was submitted


@pytest.mark.parametrize("args, expected", [
    (["hydra/launcher=submitit_local", "seed=1"], "hydra/launcher=submitit_local launches the runs of a sweep; add -m"),
    (["-m", "hydra/launcher=joblib", "seed=0,1"],
     "hydra/launcher=joblib: scorelift runs a sweep here one run after another (basic, the default) or as submitit "
     "jobs (submitit_local, submitit_slurm)."),
])
def test_a_launcher_that_does_not_apply_is_refused(args, expected):
    refused = launch([sys.executable, str(REPO / "launch.py"), *args])
    assert refused.returncode == 2
    assert expected in error_paragraph(refused.stderr)
