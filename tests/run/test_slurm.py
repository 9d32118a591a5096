"""The benchmark on a real SLURM cluster: cells as submitit job arrays, cancelled and resumed.

Needs a SLURM cluster whose nodes see this machine's /tmp: where none is up, the module starts a
one-node one on this machine (``tests/slurm_cluster.sh``: Debian's slurm-wlm and munge, as root)
and stops it afterwards. If it cannot start, these tests fail; they are not skipped.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.subprocess, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "slurm_cluster.sh"
STEPS = 40


def cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return state.returncode == 0 and any(s in state.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A running cluster: the one that is up, or a one-node one started here (and stopped, by
    PID, after this module). If it cannot start, the tests fail with its output."""
    started = False
    if not cluster_is_up():
        proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not cluster_is_up():
            pytest.fail(f"could not start the one-node SLURM cluster (bash {SCRIPT} start, exit {proc.returncode}):\n"
                        f"{proc.stdout}{proc.stderr}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scorelift.benchmark", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=900)


def rows(out: Path) -> dict:
    with open(out / "results.csv", newline="") as fh:
        return {(r["method"], r["prompt"]): r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    """One cell on the shapes prior, long enough to be cancelled while it trains."""
    path = tmp_path_factory.mktemp("slurm-preset") / "long.yaml"
    path.write_text(json.dumps({
        "description": "one cell of 40 steps, checkpointed every 5", "prompts": ["a red cube"], "seeds": [0],
        "steps": STEPS, "eval_every": 0, "methods": {"paas": ["system=sjc", "guidance=paas"]},
        "common": ["prior=shapes", "data.batch_size=1", "system.views.n_frames=4", "trainer.checkpoint_every=5",
                   "evaluators=[]"],
    }))
    return path


def test_the_ci_cells_as_a_job_array_give_the_local_numbers(tmp_path):
    args = ["ci", "--methods", "paas,sds", "--prompts", "a red cube", "--threads-per-run", "1"]
    on_slurm = bench(*args, "--out", str(tmp_path / "slurm"), "--executor", "slurm")
    assert on_slurm.returncode == 0, on_slurm.stdout + on_slurm.stderr
    assert "Submitted 2 job(s) as 2 array task(s) of SLURM job" in on_slurm.stdout
    assert "jobs: 2 done, 0 failed; array tasks: 0 running, 0 queued" in on_slurm.stdout
    here = bench(*args, "--out", str(tmp_path / "local"), "--workers", "2")
    assert here.returncode == 0, here.stdout + here.stderr
    keys = ("status", "iou", "colour_error", "identification", "final_loss")
    got, want = rows(tmp_path / "slurm"), rows(tmp_path / "local")
    assert got.keys() == want.keys() and len(got) == 2
    assert all({k: got[c][k] for k in keys} == {k: want[c][k] for k in keys} for c in want)
    jobs = json.loads((tmp_path / "slurm" / "slurm_jobs.json").read_text())["submissions"]
    assert len(jobs) == 1 and len(jobs[0]["tasks"]) == 2


def test_a_cancelled_cell_resumes_on_the_next_run_to_the_uninterrupted_weights(preset, tmp_path):
    out = tmp_path / "slurm"
    cmd = [sys.executable, "-m", "scorelift.benchmark", str(preset), "--out", str(out), "--executor", "slurm",
           "--stop-grace", "20", "--threads-per-run", "1"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    ckpt = out / "cells" / "paas" / "a_red_cube" / "s0" / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not ckpt.is_file():
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "the cell wrote no checkpoint within 300 s"
        time.sleep(0.2)
    # A stopped driver detaches: its job runs on, and the same command, run again, waits for it.
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=120)
    assert "keep running on the cluster" in stdout, stdout + stderr
    job = json.loads((out / "slurm_jobs.json").read_text())["submissions"][0]["job_ids"][0]
    assert job in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    log = tmp_path / "second-driver.log"
    with open(log, "w") as fh:
        driver = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        deadline = time.monotonic() + 120
        while "1 job(s) are held by array tasks of an earlier run that are still queued or running" not in log.read_text():
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        subprocess.run(["scancel", job], check=True, timeout=60)
        driver.wait(timeout=300)
    stdout = log.read_text()
    assert driver.returncode == 75, stdout
    assert "stopped: paas | a red cube | seed 0: stopped by SIGTERM (exit 75), checkpoint at step" in stdout, stdout
    assert not (ckpt.parent.parent.parent / "job.json").exists()

    again = bench(str(preset), "--out", str(out), "--executor", "slurm", "--threads-per-run", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "running 1 (1 stopped earlier: resumed) on SLURM" in again.stdout
    record = json.loads((out / "cells" / "paas" / "a_red_cube" / "s0" / "job.json").read_text())
    assert [(s["how"], s["outcome"]) for s in record["segments"]] == [("start", "stopped"), ("resume", "finished")]
    assert len(json.loads((out / "slurm_jobs.json").read_text())["submissions"]) == 2  # history kept; the attach submitted none

    straight = bench(str(preset), "--out", str(tmp_path / "local"), "--threads-per-run", "1")
    assert straight.returncode == 0, straight.stdout + straight.stderr
    resumed = torch.load(ckpt, map_location="cpu", weights_only=False)
    plain = torch.load(tmp_path / "local" / "cells" / "paas" / "a_red_cube" / "s0" / "run" / "checkpoints" / "last.ckpt",
                       map_location="cpu", weights_only=False)
    assert resumed["global_step"] == plain["global_step"] == STEPS
    assert all(torch.equal(resumed["state_dict"][k], plain["state_dict"][k]) for k in plain["state_dict"])


def test_a_launch_multirun_on_the_submitit_slurm_launcher_is_requeued_on_preemption(tiny_pipeline_dir, tmp_path):
    """``launch.py -m hydra/launcher=submitit_slurm seed=0,0``: two identical runs as one job array
    of the runner the benchmark uses; job 0 gets the preemption signal submitit listens for
    (SIGUSR2, what SLURM sends ahead of a time limit), checkpoints, is requeued by submitit and
    resumes to the weights of the uninterrupted job 1."""
    from tests.launching import env, same_weights, wait_for_checkpoint
    from tests.run.test_multirun import sweep_args

    sweep_dir = tmp_path / "sweep"
    args = sweep_args(tiny_pipeline_dir, sweep_dir, "0,0", launcher="submitit_slurm", steps=40)
    driver = subprocess.Popen([*args, "trainer.checkpoint_every=2", "hydra.launcher.timeout_min=30"], cwd=REPO,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(driver, sweep_dir / "0" / "run", 4, timeout=300)
    task = next((sweep_dir / ".submitit").glob("*_0")).name  # "<array job id>_0"
    subprocess.run(["scancel", "--signal=USR2", task], check=True, timeout=60)
    deadline = time.monotonic() + 120
    while "Requeued job" not in "".join(p.read_text() for p in (sweep_dir / ".submitit" / task).glob("*_log.*")):
        assert time.monotonic() < deadline and driver.poll() is None, "job 0 was not requeued"
        time.sleep(0.2)
    # The requeued job starts once the old job's credential expires (cred_expire, tests/slurm_cluster.sh).
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stdout + stderr[-3000:]
    assert f"job 0: finished {sweep_dir / '0' / 'run'}" in stdout and f"sweep {sweep_dir}: 2 of 2 runs finished" in stdout
    assert "sacct" not in stdout + stderr  # job states come from squeue: no accounting database needed
    runs = json.loads((sweep_dir / "0" / "run" / "run_info.json").read_text())["invocations"]
    assert [(r["status"], r.get("signal")) for r in runs] == [("stopped", "SIGUSR2"), ("finished", None)]
    record = json.loads((sweep_dir / "0" / "job.json").read_text())
    assert [(s["how"], s["outcome"]) for s in record["segments"]] == [("start", "stopped"), ("resume", "finished")]
    assert len(json.loads((sweep_dir / "slurm_jobs.json").read_text())["submissions"]) == 1  # requeued, not resubmitted
    assert same_weights(sweep_dir / "0" / "run" / "checkpoints" / "last.ckpt",
                        sweep_dir / "1" / "run" / "checkpoints" / "last.ckpt")


def test_a_preempted_cell_is_requeued_and_resumes_in_its_requeued_job(preset, tmp_path):
    """SIGUSR2 (what SLURM sends ahead of a time limit, and on preemption where so configured):
    the task stops its cell with a checkpoint, submitit requeues the task, and the requeued task
    resumes the cell; the one driver invocation ends with the cell finished."""
    out = tmp_path / "slurm"
    cmd = [sys.executable, "-m", "scorelift.benchmark", str(preset), "--out", str(out), "--executor", "slurm",
           "--stop-grace", "20", "--threads-per-run", "1"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    folder = out / "cells" / "paas" / "a_red_cube" / "s0"
    deadline = time.monotonic() + 300
    while not (folder / "run" / "checkpoints" / "last.ckpt").is_file():
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.2)
    task = json.loads((out / "slurm_jobs.json").read_text())["submissions"][0]["task_ids"][0]
    subprocess.run(["scancel", "--signal=USR2", task], check=True, timeout=60)
    deadline = time.monotonic() + 120
    while "Requeued job" not in "".join(p.read_text() for p in (out / ".submitit").glob(f"{task}/*_log.out")):
        assert driver.poll() is None and time.monotonic() < deadline, "the task was not requeued"
        time.sleep(0.2)
    # The requeued job starts once the old job's credential expires (cred_expire, tests/slurm_cluster.sh).
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stdout + stderr
    record = json.loads((folder / "job.json").read_text())
    assert [(s["how"], s["outcome"]) for s in record["segments"]] == [("start", "stopped"), ("resume", "finished")]
    assert len(json.loads((out / "slurm_jobs.json").read_text())["submissions"]) == 1  # requeued, not resubmitted


def test_the_claims_go_to_the_cluster_as_one_array_and_are_judged_from_its_cells(tmp_path):
    """``scorelift-bench claims --executor slurm``: the claim's six cells go to the cluster as two array
    tasks of three, and each part is judged on the metrics the cells wrote there (that a cell on the
    cluster gives the local numbers is the job-array test above)."""
    out = tmp_path / "claims"
    run = bench("claims", "--size", "ci", "--claims", "sjc-paas", "--threads-per-run", "1", "--out", str(out),
                "--executor", "slurm", "--cells-per-job", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Submitted 6 job(s) as 2 array task(s) of SLURM job" in run.stdout
    (submission,) = json.loads((out / "slurm_jobs.json").read_text())["submissions"]
    assert len(submission["tasks"]) == 2
    (claim,) = json.loads((out / "claims.json").read_text())["claims"]
    assert claim["finished"] == 6 and "## sjc-paas: " + claim["verdict"] in (out / "claims.md").read_text()
    for part in claim["parts"]:
        for arm, values in (("paas", part["values_a"]), ("naive", part["values_b"])):
            cells = out / "cells" / f"sjc-paas.main.{arm}" / "a_red_cube"
            wrote = {f"a red cube / seed {seed}": json.loads((cells / f"s{seed}" / "run" / "metrics.json").read_text())
                     [part["metric"]] for seed in (0, 1, 2)}
            assert values == wrote and not any(math.isnan(v) for v in wrote.values())
