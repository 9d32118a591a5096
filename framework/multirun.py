"""Sweeps (``scorelift -m ...``): one run per combination, each a job of the one runner (``scorelift.jobs``).

    scorelift -m guidance=sds,paas seed=0,1,2                                   # here, one after another
    scorelift -m hydra/launcher=submitit_local guidance=sds,paas seed=0,1,2      # here, all at once
    scorelift -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu \\
        hydra.launcher.gpus_per_node=1 guidance=sds,paas seed=0,1,2             # a SLURM job array

Every run of a sweep is composed and checked before the first starts (``launcher.main``). Job N
of the sweep runs in ``<hydra.sweep.dir>/N/`` (the run in ``run/``, its output in ``stdout.log``,
its records beside them: ``scorelift.jobs.folder``), the folder format the benchmark's cells have.
The ``hydra/launcher`` options keep the names of Hydra's submitit launcher plugin, whose config
schema checks them; scorelift reads them and runs the jobs itself.

A sweep folder resumes: given again as ``hydra.sweep.dir=<folder>``, a job that finished is
skipped, one that was stopped continues from its checkpoint, and a folder that holds another
job's run (the sweep changed) is refused before anything starts. On SLURM, the time-limit signal
(SIGUSR2, ``signal_delay_s`` ahead) makes the job checkpoint and requeues it; the requeued job
resumes from that checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .command_line import KEYS_NOT_CARRIED, saved_overrides
from .errors import EXIT_STOPPED, ConfigError
from .jobs import Job, SlurmOptions, foreign_folders, is_finished, run_jobs
from .jobs.job import fingerprint_of

SUBMITIT_LAUNCHERS = ("submitit_local", "submitit_slurm")
# Re-submissions a SLURM job may make after hitting its time limit. The plugin's default (0) is
# for code that cannot resume; a scorelift run resumes from its checkpoint.
DEFAULT_MAX_NUM_TIMEOUT = 3
# What the runner adds to a job's command line (lifecycle.fresh_command), not the job's own overrides.
RUNNER_KEYS = ("trainer.progress_bar=", "trainer.stop_signals=")
# hydra.launcher options of submitit_slurm that become sbatch options as they are.
SBATCH_KEYS = ("qos", "comment", "constraint", "exclude", "gres", "cpus_per_gpu", "mem_per_gpu", "mem_per_cpu",
               "account")


def launcher_choice(overrides: list[str]) -> str | None:
    """The ``hydra/launcher=`` option the command line picks (None: Hydra's basic launcher)."""
    from .compose import find_override

    given = find_override(overrides, "hydra/launcher")
    return given.split("=", 1)[1] if given else None


def comparable(overrides: list[str] | None) -> list[str]:
    """A run's own overrides, without those that name one invocation (resume, mode, hydra.*)."""
    return [o for o in saved_overrides(overrides or []) if not o.startswith(KEYS_NOT_CARRIED)]


def override_facts(overrides: list[str]) -> list:
    """What ``overrides`` say, as Hydra parses them (``a=false`` and ``a=False`` say the same:
    Hydra's sweeper writes values back in its own spelling)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(comparable(overrides))
    except OverrideParseException:
        return comparable(overrides)
    return [[o.type.name, o.key_or_group, o.package, repr(o.value())] for o in parsed]


def sweep_jobs_of(job_overrides: list[list[str]]) -> list[Job]:
    """The runner's jobs of a sweep: job N in folder ``N``, with the run's own overrides."""
    jobs = []
    for number, overrides in enumerate(job_overrides):
        own = saved_overrides(overrides)
        jobs.append(Job(key=str(number), overrides=tuple(own), label=f"job {number}",
                        fingerprint=fingerprint_of(override_facts(own)), facts={"overrides": comparable(own)}))
    return jobs


def check_sweep_folder(sweep_dir: Path, jobs: list[Job]) -> None:
    """ConfigError when a job's folder holds another job's run or files the runner did not
    write: a sweep folder resumes only with the same command line, and nothing in it is replaced."""
    for job, what in foreign_folders(sweep_dir, jobs):
        folder = job.folder(sweep_dir)
        ours = " ".join(job.facts["overrides"]) or "none"
        if what == "records of another job":
            theirs = " ".join(recorded_overrides(folder)) or "unknown"
            raise ConfigError(
                f"{folder} holds a run of other overrides ({theirs}) than {job.label} of this sweep ({ours}); a sweep "
                f"resumes only with the same command line. Give the sweep a new folder (leave hydra.sweep.dir at its "
                f"default).")
        raise ConfigError(
            f"{folder} holds files this sweep did not write (a sweep folder of an earlier scorelift, whose runs wrote "
            f"straight into it, or something else), so {job.label} of this sweep ({ours}) cannot run there. Give the "
            f"sweep a new folder (leave hydra.sweep.dir at its default); a run of an earlier sweep continues with "
            f"`scorelift resume=<its folder>`.")


def recorded_overrides(folder: Path) -> list[str]:
    """The overrides of the job whose records ``folder`` holds: its record's, or (a job that
    stopped, which has only segments.json) those its first process was started with."""
    from .jobs.folder import FAILED, SEGMENTS, finished_record, read_json

    record = finished_record(folder) or read_json(folder / FAILED) or {}
    if record.get("overrides"):
        return list(record["overrides"])
    segments = (read_json(folder / SEGMENTS) or {}).get("segments") or [{}]
    command = segments[0].get("command") or []  # ["-m", "scorelift", *overrides, <what the runner adds>]
    return comparable([a for a in command[2:] if not a.startswith(RUNNER_KEYS)])


def slurm_options(launcher: DictConfig) -> SlurmOptions:
    """The runner's SLURM options from ``hydra.launcher`` of ``hydra/launcher=submitit_slurm``."""
    if launcher.nodes != 1 or launcher.tasks_per_node != 1:
        raise ConfigError(
            f"hydra.launcher.nodes={launcher.nodes} and hydra.launcher.tasks_per_node={launcher.tasks_per_node}: a "
            f"scorelift run is one process on one node, so both must be 1; ask for more GPUs or CPUs with "
            f"hydra.launcher.gpus_per_node and hydra.launcher.cpus_per_task.")
    sbatch = {key: str(launcher[key]) for key in SBATCH_KEYS if launcher[key] is not None}
    if launcher.mem_gb is not None:
        sbatch["mem"] = f"{launcher.mem_gb}GB"
    sbatch.update({str(k): str(v) for k, v in (launcher.additional_parameters or {}).items()})
    opts = SlurmOptions(
        partition=launcher.partition, time_min=int(launcher.timeout_min),
        gpus_per_task=int(launcher.gpus_per_node or launcher.gpus_per_task or 0),
        cpus_per_task=int(launcher.cpus_per_task or 1), jobs_per_task=1,
        array_parallelism=int(launcher.array_parallelism), signal_delay_s=int(launcher.signal_delay_s),
        max_requeues=int(launcher.max_num_timeout) or DEFAULT_MAX_NUM_TIMEOUT, sbatch=sbatch,
        setup=list(launcher.setup or []), job_name=str(launcher.name))
    opts.check()
    return opts


def run_sweep(sweep_dir: Path, jobs: list[Job], choice: str | None, hydra_cfg: DictConfig) -> int:
    """Run a checked sweep's jobs through the runner: one at a time here (the default), all at
    once here (submitit_local) or as a SLURM job array (submitit_slurm). One line per job, then
    the exit code (0 all finished, 75 some stopped, 1 some failed)."""
    slurm = slurm_options(hydra_cfg.launcher) if choice == "submitit_slurm" else None
    workers = len(jobs) if choice == "submitit_local" else 1
    finished_before = {j.key for j in jobs if is_finished(sweep_dir, j)}
    # Running the sweep again means "do what is left": a failed job runs again, from scratch.
    outcome = run_jobs(sweep_dir, jobs, workers, slurm=slurm, retry_failed=True, log=lambda line: print(line, flush=True))
    statuses = {r["key"]: r["status"] for r in outcome.records}
    return report(sweep_dir, jobs, finished_before, statuses, outcome.stopped_by)


def report(sweep_dir: Path, jobs: list[Job], finished_before: set[str], statuses: dict[str, str],
           stopped_by: str | None) -> int:
    """One line per job; the exit code of the sweep."""
    words = {"ok": "finished", "stopped": "stopped", "failed": "failed"}
    done = 0
    for job in jobs:
        run = job.folder(sweep_dir) / "run"
        if job.key in finished_before:
            status, note = "skipped", "  (finished before)"
        else:
            status, note = words.get(statuses.get(job.key), "not run"), ""
        done += status in ("finished", "skipped")
        print(f"{job.label}: {status:<8} {run}{note}")
    print(f"sweep {sweep_dir}: {done} of {len(jobs)} runs finished")
    if done < len(jobs):
        print(f"  rerun the same command with hydra.sweep.dir='{sweep_dir}' to resume the stopped runs and skip "
              f"the finished ones")
    if "failed" in statuses.values():
        return 1
    return EXIT_STOPPED if done < len(jobs) or stopped_by else 0

