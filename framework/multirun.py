"""Sweeps (``scorelift -m ...``): one run per combination, here one after another or as submitit jobs.

    scorelift -m guidance=sds,paas seed=0,1,2                                   # here, in turn
    scorelift -m hydra/launcher=submitit_local guidance=sds,paas seed=0,1,2      # submitit, this machine
    scorelift -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu \\
        hydra.launcher.gpus_per_node=1 guidance=sds,paas seed=0,1,2             # a SLURM job array

Every run of a sweep is composed and checked before the first starts (``launcher.main``). With a
submitit launcher (Hydra's submitit launcher plugin) the sweep goes through Hydra's own multirun:
its basic sweeper splits the combinations, the plugin submits them as one job array, and each job
runs ``sweep_job`` in ``<hydra.sweep.dir>/<job number>``.

A sweep folder resumes: given again as ``hydra.sweep.dir=<folder>``, a job whose folder holds a
finished run of the same overrides is skipped, one that was stopped continues from its
checkpoint, and one whose folder holds another job's run is refused before anything starts.
On the preemption signal submitit listens for (SIGUSR2, the signal SLURM sends ahead of a time
limit with the plugin's ``signal_delay_s``) a job finishes its step, checkpoints and has submitit
requeue it; the requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

import yaml
from omegaconf import DictConfig, open_dict

from .command_line import KEYS_NOT_CARRIED, saved_overrides
from .errors import EXIT_STOPPED, ConfigError, RunStopped, ScoreliftError

log = logging.getLogger(__name__)

SUBMITIT_LAUNCHERS = ("submitit_local", "submitit_slurm")
# Re-submissions a SLURM job may make after hitting its time limit. The plugin's default (0) is
# for code that cannot resume; a scorelift run resumes from its checkpoint.
DEFAULT_MAX_NUM_TIMEOUT = 3


def launcher_choice(overrides: list[str]) -> str | None:
    """The ``hydra/launcher=`` option the command line picks (None: Hydra's basic launcher)."""
    from .compose import find_override

    given = find_override(overrides, "hydra/launcher")
    return given.split("=", 1)[1] if given else None


# ------------------------------------------------------------------------------ resuming a sweep folder
def run_state(run_dir: Path) -> tuple[str | None, list[str] | None]:
    """(how the run in ``run_dir`` last ended, or None if it never recorded an end; the overrides it
    saved), or (None, None) where ``run_dir`` holds no run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        return None, None
    saved = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    try:
        invocations = json.loads((run_dir / "run_info.json").read_text()).get("invocations", [])
    except (OSError, ValueError):
        invocations = []
    trained = [i for i in invocations if i.get("mode") == "train"]
    return (trained[-1].get("status") if trained else None), overrides


def comparable(overrides: list[str] | None) -> list[str]:
    """A run's own overrides, without those that name one invocation (resume, mode, hydra.*)."""
    return [o for o in saved_overrides(overrides or []) if not o.startswith(KEYS_NOT_CARRIED)]


def same_overrides(saved: list[str] | None, given: list[str]) -> bool:
    """Whether two override lists say the same thing (``a=false`` and ``a=False`` do: Hydra's
    sweeper writes values back in its own spelling), compared as Hydra parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    try:
        parsed = [parser.parse_overrides(comparable(o)) for o in (saved, given)]
    except OverrideParseException:
        return comparable(saved) == comparable(given)
    as_facts = [[(o.type, o.key_or_group, o.package, repr(o.value())) for o in each] for each in parsed]
    return as_facts[0] == as_facts[1]


def sweep_job_plan(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> str:
    """What job ``run_dir`` of a sweep does: ``new`` (nothing there yet), ``resume`` (a stopped or
    interrupted run of these overrides: ``cfg.resume`` is set to it) or ``skip`` (finished).
    ConfigError when the folder holds a run of other overrides (the sweep changed)."""
    status, saved = run_state(run_dir)
    if status is None and saved is None:
        return "new"
    if not same_overrides(saved, overrides):
        raise ConfigError(
            f"{run_dir} holds a run of other overrides ({' '.join(comparable(saved)) or 'none'}) than job "
            f"{run_dir.name} of this sweep ({' '.join(comparable(overrides)) or 'none'}); a sweep resumes only "
            f"with the same command line. Give the sweep a new folder (leave hydra.sweep.dir at its default)."
        )
    if status == "finished" and cfg.mode == "train":
        return "skip"
    with open_dict(cfg):
        cfg.resume = str(run_dir)
    return "resume"


# ------------------------------------------------------------------------------ the job (in the job's process)
def preemption_signal() -> signal.Signals:
    """The signal submitit requeues a job on (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")]


def with_stop_signal(cfg: DictConfig, sig: signal.Signals) -> None:
    """Add ``sig`` to the run's stop signals, so that it, too, ends the run with a checkpoint."""
    from .stop_signals import parse_stop_signals

    if sig not in parse_stop_signals(list(cfg.trainer.stop_signals)):
        cfg.trainer.stop_signals = [*[str(n) for n in cfg.trainer.stop_signals], sig.name]


def stop_signal_of(run_dir: Path) -> str | None:
    """The signal that stopped the run's last invocation (run_info.json)."""
    try:
        return json.loads((Path(run_dir) / "run_info.json").read_text())["invocations"][-1].get("signal")
    except (OSError, ValueError, KeyError, IndexError):
        return None


def sweep_job(cfg: DictConfig) -> dict:
    """One job of a submitit sweep (Hydra's task function): the run of this job's overrides in its
    sweep subfolder, resumed if an earlier attempt left a checkpoint there.

    Returns {"run_dir", "status" (finished | skipped | stopped | failed), "message"}. On submitit's
    preemption signal the run checkpoints and submitit's own handler requeues the job (it does
    not return then)."""
    from hydra.core.hydra_config import HydraConfig

    from .console import setup_console_logging
    from .run import run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = comparable(list(hydra_cfg.overrides.task))
    setup_console_logging()
    try:
        if sweep_job_plan(cfg, run_dir, overrides) == "skip":
            log.info("%s holds a finished run of this job: skipped.", run_dir)
            return {"run_dir": str(run_dir), "status": "skipped", "message": "finished before"}
        preempt = preemption_signal()
        requeue = signal.getsignal(preempt)  # submitit's checkpoint-and-requeue handler
        if cfg.mode == "train" and callable(requeue):
            with_stop_signal(cfg, preempt)
        try:
            run(cfg, run_dir, overrides=overrides)
        except RunStopped as exc:
            if stop_signal_of(run_dir) == preempt.name and callable(requeue):
                log.info("Preempted: the checkpoint is written; submitit requeues the job, which resumes it.")
                requeue(preempt, None)  # requeues and exits this process
            return {"run_dir": str(run_dir), "status": "stopped", "message": str(exc)}
        return {"run_dir": str(run_dir), "status": "finished", "message": ""}
    except ScoreliftError as exc:
        return {"run_dir": str(run_dir), "status": "failed", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001  (reported with its traceback; launch.log has the run's log)
        return {"run_dir": str(run_dir), "status": "failed",
                "message": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}


# ------------------------------------------------------------------------------ the driver
def submitit_overrides(overrides: list[str], sweep_dir: Path, choice: str) -> list[str]:
    """The command line handed to Hydra's multirun: the sweep folder pinned to the one the checks
    used (its default holds the time), and the re-submission count of a resumable job."""
    extra = [f"hydra.sweep.dir='{sweep_dir.as_posix()}'"]
    if choice == "submitit_slurm" and not any(o.split("=", 1)[0] == "hydra.launcher.max_num_timeout" for o in overrides):
        extra.append(f"hydra.launcher.max_num_timeout={DEFAULT_MAX_NUM_TIMEOUT}")
    if not any(o.split("=", 1)[0] == "hydra/job_logging" for o in overrides):
        extra.append("hydra/job_logging=none")  # a run logs to its launch.log and the job's output already
    return [o for o in overrides if not o.startswith("hydra.sweep.dir=")] + extra


def run_on_submitit(overrides: list[str], sweep_dir: Path, choice: str) -> int:
    """Run a checked sweep through Hydra's multirun and the submitit launcher ``choice``; print one
    line per job and return the exit code (0 all finished, 75 some stopped, 1 some failed)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from .compose import CONFIG_MODULE, search_path_override

    from submitit.core.utils import FailedJobError, UncompletedJobError

    from .slurm_queue import use_squeue_for_submitit

    if choice == "submitit_slurm":
        use_squeue_for_submitit()  # job states without the accounting database (sacct)
    command = submitit_overrides(overrides, sweep_dir, choice)
    log.info("Submitting %s as submitit jobs (hydra/launcher=%s); each job's log: %s/<job>/launch.log",
             sweep_dir, choice, sweep_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None, job_name="scorelift"):
            batches = GlobalHydra.instance().hydra.multirun(
                config_name="config", task_function=sweep_job, overrides=[*command, *search_path_override(command)])
    except (FailedJobError, UncompletedJobError) as exc:  # a job killed outright (no result), or submitit's own failure
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"scorelift: error: a job of the sweep ended without a result: {first} (its submitit logs are under "
              f"{sweep_dir}/.submitit/). Rerun the same command with hydra.sweep.dir='{sweep_dir}' to resume.",
              file=sys.stderr)
        return 1
    results = [job.return_value for batch in batches for job in batch]
    return report(results, sweep_dir)


def report(results: list[dict], sweep_dir: Path) -> int:
    """One line per job; the exit code of the sweep."""
    for number, result in enumerate(results):
        message = result["message"].strip().splitlines()[0] if result["message"].strip() else ""
        print(f"job {number}: {result['status']:<8} {result['run_dir']}" + (f"  ({message})" if message else ""))
    statuses = [r["status"] for r in results]
    done = sum(s in ("finished", "skipped") for s in statuses)
    print(f"sweep {sweep_dir}: {done} of {len(results)} runs finished")
    if "failed" in statuses or "stopped" in statuses:
        print(f"  rerun the same command with hydra.sweep.dir='{sweep_dir}' to resume the stopped runs and "
              f"skip the finished ones")
    if "failed" in statuses:
        return 1
    return EXIT_STOPPED if "stopped" in statuses else 0

