"""``scorelift -m``: each combination a job of the one runner (``scorelift.jobs``), in
``<hydra.sweep.dir>/<job>/`` (the run in ``run/``), a sweep folder that resumes, and a stop that
checkpoints. The same sweep on a real SLURM cluster, preempted, is in test_slurm.py."""

from __future__ import annotations

import json
import signal
import sys

import pytest
import yaml

from tests.launching import REPO, error_paragraph, final_step, launch, same_weights, start, wait_for_checkpoint
from tests.run.test_system import small_run_overrides

pytestmark = pytest.mark.subprocess

STEPS = 6


def sweep_args(pipeline, sweep_dir, seeds: str, launcher: str | None = "submitit_local", steps: int = STEPS) -> list[str]:
    """launch.py -m over ``seeds`` of a tiny sjc + paas run (``launcher`` None: the default, one at a time)."""
    chosen = [f"hydra/launcher={launcher}"] if launcher else []
    return [sys.executable, str(REPO / "launch.py"), "-m", *chosen, f"seed={seeds}",
            *small_run_overrides(pipeline, 8, "sjc", "paas", steps), f"hydra.sweep.dir={sweep_dir}"]


@pytest.fixture(scope="module")
def sweep(tiny_pipeline_dir, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "seeds"
    done = launch(sweep_args(tiny_pipeline_dir, sweep_dir, "0,1"))
    return sweep_dir, done


def test_a_submitit_local_sweep_runs_each_combination_as_a_job_of_the_runner(sweep):
    sweep_dir, done = sweep
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"job 0: finished {sweep_dir / '0' / 'run'}" in done.stdout
    assert f"job 1: finished {sweep_dir / '1' / 'run'}" in done.stdout
    assert f"sweep {sweep_dir}: 2 of 2 runs finished" in done.stdout
    assert "running 2 with 2 worker(s) on the CPU" in done.stdout  # submitit_local: all at once
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit tasks ran them
    for job in (0, 1):
        folder = sweep_dir / str(job)
        run_dir = folder / "run"
        assert final_step(run_dir) == STEPS
        assert f"seed={job}" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        info = json.loads((run_dir / "run_info.json").read_text())
        assert info["seed"] == job and info["invocations"][-1]["status"] == "finished"
        assert (run_dir / "turntable.mp4").is_file() and "step" in (folder / "stdout.log").read_text()
        # the runner's one folder format, as a benchmark cell has it
        record = json.loads((folder / "job.json").read_text())
        assert record["status"] == "ok" and record["key"] == str(job) and f"seed={job}" in record["overrides"]
        assert [(s["how"], s["outcome"]) for s in record["segments"]] == [("start", "finished")]
        assert not (folder / "segments.json").exists() and not (folder / "failed.json").exists()
    assert not same_weights(sweep_dir / "0" / "run" / "checkpoints" / "last.ckpt",
                            sweep_dir / "1" / "run" / "checkpoints" / "last.ckpt")


def test_the_same_sweep_folder_again_skips_the_finished_runs(sweep, tiny_pipeline_dir):
    sweep_dir, _ = sweep
    before = [(sweep_dir / str(j) / "run" / "checkpoints" / "last.ckpt").stat().st_mtime_ns for j in (0, 1)]
    again = launch(sweep_args(tiny_pipeline_dir, sweep_dir, "0,1"))
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"job 0: skipped  {sweep_dir / '0' / 'run'}  (finished before)" in again.stdout
    assert "2 of 2 jobs already finished; running 0" in again.stdout
    assert f"sweep {sweep_dir}: 2 of 2 runs finished" in again.stdout
    assert [(sweep_dir / str(j) / "run" / "checkpoints" / "last.ckpt").stat().st_mtime_ns for j in (0, 1)] == before


def test_a_changed_sweep_in_an_old_folder_is_refused_before_anything_runs(sweep, tiny_pipeline_dir):
    sweep_dir, _ = sweep
    tasks_before = sorted((sweep_dir / ".submitit").iterdir())
    refused = launch(sweep_args(tiny_pipeline_dir, sweep_dir, "0,2"))
    assert refused.returncode == 2
    message = error_paragraph(refused.stderr)
    assert f"{sweep_dir / '1'} holds a run of other overrides (seed=1 " in message
    assert "than job 1 of this sweep (seed=2 " in message
    assert sorted((sweep_dir / ".submitit").iterdir()) == tasks_before  # nothing was submitted


def test_a_folder_the_runner_did_not_write_is_refused_and_kept(tiny_pipeline_dir, tmp_path):
    """A sweep folder of the earlier format (each run straight in ``<sweep>/<job>``) is not replaced."""
    sweep_dir = tmp_path / "old"
    (sweep_dir / "0").mkdir(parents=True)
    (sweep_dir / "0" / "config.yaml").write_text("seed: 0\n")
    refused = launch(sweep_args(tiny_pipeline_dir, sweep_dir, "0,1", launcher=None))
    assert refused.returncode == 2
    message = error_paragraph(refused.stderr)
    assert f"{sweep_dir / '0'} holds files this sweep did not write" in message and "resume=<its folder>" in message
    assert sorted(p.name for p in (sweep_dir / "0").iterdir()) == ["config.yaml"]
    assert not (sweep_dir / "1").exists()


def test_a_sweep_stopped_by_ctrl_c_resumes_to_the_uninterrupted_weights(tiny_pipeline_dir, tmp_path):
    """The default launcher runs the jobs one after another; SIGINT (a terminal's Ctrl+C) stops the
    running one with a checkpoint and starts no other (exit 75); the same command resumes it, and
    it ends with the weights of job 1, the same run uninterrupted (``seed=0,0``)."""
    sweep_dir = tmp_path / "sweep"
    args = [*sweep_args(tiny_pipeline_dir, sweep_dir, "0,0", launcher=None, steps=20), "trainer.checkpoint_every=2"]
    driver = start(args)
    wait_for_checkpoint(driver, sweep_dir / "0" / "run", 4, timeout=300)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 75, stdout + stderr[-3000:]
    assert "stopped: job 0: stopped by SIGTERM (exit 75), checkpoint at step" in stdout
    assert f"job 1: not run  {sweep_dir / '1' / 'run'}" in stdout and "0 of 2 runs finished" in stdout
    assert not (sweep_dir / "1").exists()
    # the stopped job is kept for this sweep only: another sweep in the folder is refused, naming
    # the overrides the stopped job was started with (what the launcher does before anything runs)
    from scorelift.command_line import sweep_jobs
    from scorelift.errors import ConfigError
    from scorelift.multirun import check_sweep_folder, sweep_jobs_of

    other = sweep_jobs_of(sweep_jobs([o.replace("seed=0,0", "seed=1,0") for o in args[3:]]))
    with pytest.raises(ConfigError, match=f"{sweep_dir / '0'} holds a run of other overrides \\(seed=0 "):
        check_sweep_folder(sweep_dir, other)

    again = launch(args)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert "running 2 (1 stopped earlier: resumed) with 1 worker(s) on the CPU" in again.stdout
    record = json.loads((sweep_dir / "0" / "job.json").read_text())
    assert [(s["how"], s["outcome"]) for s in record["segments"]] == [("start", "stopped"), ("resume", "finished")]
    runs = json.loads((sweep_dir / "0" / "run" / "run_info.json").read_text())["invocations"]
    assert [r["status"] for r in runs] == ["stopped", "finished"]
    assert same_weights(sweep_dir / "0" / "run" / "checkpoints" / "last.ckpt",
                        sweep_dir / "1" / "run" / "checkpoints" / "last.ckpt")


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


def test_the_slurm_launchers_options_become_the_runners():
    """``hydra.launcher.*`` of submitit_slurm, checked by the plugin's schema, is what the runner
    asks SLURM for; a multi-node or multi-task job is refused (a run is one process)."""
    from scorelift.compose import compose_config
    from scorelift.errors import ConfigError
    from scorelift.multirun import slurm_options

    cfg = compose_config(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
                          "hydra.launcher.cpus_per_task=4", "hydra.launcher.mem_gb=16", "hydra.launcher.qos=high",
                          "hydra.launcher.timeout_min=240", "+hydra.launcher.additional_parameters.reservation=r1",
                          "hydra.launcher.setup=[module load cuda]"])
    opts = slurm_options(cfg.hydra.launcher)
    assert (opts.partition, opts.gpus_per_task, opts.cpus_per_task, opts.time_min) == ("gpu", 1, 4, 240)
    assert opts.sbatch == {"qos": "high", "mem": "16GB", "reservation": "r1"} and opts.setup == ["module load cuda"]
    assert (opts.max_requeues, opts.signal_delay_s, opts.jobs_per_task) == (3, 120, 1)  # requeued: runs resume
    two_nodes = compose_config(["hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2"])
    with pytest.raises(ConfigError, match="hydra.launcher.nodes=2 and hydra.launcher.tasks_per_node=1: a scorelift run is "
                                          "one process on one node"):
        slurm_options(two_nodes.hydra.launcher)
