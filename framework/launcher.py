"""scorelift's one start-up path (``scorelift``, ``python -m scorelift``, ``python launch.py``).

    command line -> compose once (Hydra's Compose API) -> check once -> build -> create the run
    directory -> train / re-render / export

Nothing is written before the config has been composed and checked and the parts have been
built, so bad input exits with code 2 and one paragraph and leaves nothing behind. A sweep
(``-m``) composes and checks every run before the first one starts, then hands them to the one
job runner (``scorelift.multirun``, ``scorelift.jobs``): one after another here, all at once
here, or as a SLURM job array. Exit codes: 0 finished, 2 bad input, 74 a write found no space,
75 stopped by a signal with a checkpoint ("resume me"); see ``scorelift.errors``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# OpenMP worker threads spin before they sleep, GNU OpenMP's 300,000 turns by default: on a 2-core
# machine shared with one other job, the spinning threads of each hold the cores the other's need,
# and a main-job step took 5.1 s instead of 0.24 s alone (21 times, where half the CPU should cost
# 2). With 1,000 turns it took 0.45 s beside the other job, and alone 1.9 % more than at the
# default (paired whole runs). Set before torch is imported (libgomp reads it when loaded); a
# user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from omegaconf import DictConfig, OmegaConf, open_dict

from .command_line import (
    expand_resume,
    format_plugin_list,
    parse_command_line,
    saved_config_only,
    saved_overrides,
    sweep_jobs,
)
from .console import setup_console_logging
from .errors import EXIT_BAD_INPUT, ConfigError, RunStopped, ScoreliftError
from .stages import split_stage_overrides, stage_specs


def fail(exc: ScoreliftError) -> int:
    """One paragraph on stderr; the exit code that says what happened (``scorelift.errors``)."""
    what = "stopped" if isinstance(exc, RunStopped) else "error"
    print(f"scorelift: {what}: {exc}", file=sys.stderr)
    return getattr(exc, "exit_code", EXIT_BAD_INPUT)


def run_dir_of(cfg: DictConfig) -> Path:
    """Where a run writes: ``hydra.run.dir`` (default ``outputs/<system>-<guidance>/<prompt>@<time>``;
    a sweep's job N: ``<hydra.sweep.dir>/N/run``, which its runner passes as hydra.run.dir)."""
    try:
        return Path(str(OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=True)))
    except Exception as exc:  # noqa: BLE001  (an interpolation that cannot resolve)
        raise ConfigError(f"The run directory (hydra.run.dir) cannot be resolved: {exc}") from None


def job_config(cfg: DictConfig) -> DictConfig:
    """The run's own config: everything but the ``hydra`` node (read for the run directory only)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def compose_job(overrides: list[str]) -> tuple[DictConfig, list[str] | None]:
    """The config of one job and the overrides its run saves for ``resume=``: composed from the
    command line (a resume re-applies the run's saved overrides first), or, for a resumed run
    whose .hydra/ is gone, from its saved config.yaml (and then no overrides are saved, so that
    later resumes start from config.yaml again)."""
    from .compose import compose_config, compose_saved

    saved = saved_config_only(overrides)
    if saved is not None:
        print(f"scorelift: {saved.parent} has no .hydra/overrides.yaml: resuming from its config.yaml.", file=sys.stderr)
        return compose_saved(saved, overrides), None
    expanded = expand_resume(overrides)
    plain, scoped = split_stage_overrides(expanded)  # stages.<name>.<key>=...: one stage's, applied by scorelift.stages
    cfg = compose_config(plain)
    if scoped and not stage_specs(cfg):
        raise ConfigError(
            f"{scoped[0]} sets a key of one stage, but this run has no stages (only a staged system such as "
            f"system=magic3d has; its stages are listed by `scorelift --cfg job system=magic3d`). Drop the "
            f"'stages.<name>.' prefix.")
    return cfg, saved_overrides(expanded)


def main(argv: list[str] | None = None) -> int:
    # The heavy libraries (torch, Lightning, diffusers) are imported where a step needs them, not
    # here: --help, --list and a refused command line answer in about a second.
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["view"]:  # scorelift view RUN: the live viewer on a run (scorelift.view_run)
        from .view_run import run_view

        return run_view(argv[1:])
    args = parse_command_line(argv)
    if args.list_parts:
        print(format_plugin_list())
        return 0
    from .checks import check_inputs
    from .library_noise import quiet_known_library_noise
    from .multirun import SUBMITIT_LAUNCHERS, launcher_choice

    quiet_known_library_noise(transformers=False)  # run() installs the rest, before a prior loads
    try:
        launcher = check_launcher(launcher_choice(args.overrides), args.multirun, SUBMITIT_LAUNCHERS)
        jobs = sweep_jobs(args.overrides) if args.multirun else [args.overrides]
        composed = [compose_job(job) for job in jobs]
        configs = [cfg for cfg, _ in composed]
        if not args.multirun and stage_specs(configs[0]):  # a staged system: its stages run in turn
            return start_stages(configs[0], composed[0][1], args.show_cfg)
        if args.show_cfg:
            for cfg in configs:
                keys = {"job": [k for k in cfg if k != "hydra"], "hydra": ["hydra"], "all": list(cfg)}[args.show_cfg]
                print(OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, keys)))
            return 0
        if args.multirun:
            return start_sweep(jobs, configs, launcher)
        cfg, overrides = job_config(configs[0]), composed[0][1]
        run_dir = run_dir_of(configs[0])
        plan = check_inputs(cfg, run_dir)
    except ScoreliftError as exc:
        return fail(exc)
    setup_console_logging()
    from .run import run

    try:
        run(cfg, run_dir, overrides=overrides, plan=plan)
    except ScoreliftError as exc:
        return fail(exc)
    return 0


def start_stages(cfg: DictConfig, overrides: list[str] | None, show_cfg: str | None) -> int:
    """A staged run (``scorelift.stages``): every stage checked, then each run in turn in the job's
    run directory; with ``--cfg`` every stage's config printed instead."""
    from .stages import run_stages, show_stages

    run_dir = run_dir_of(cfg)
    if show_cfg:
        print(show_stages(job_config(cfg), overrides or [], run_dir))
        return 0
    setup_console_logging()
    run_stages(job_config(cfg), overrides, run_dir)
    return 0


def start_sweep(job_overrides: list[list[str]], configs: list[DictConfig], launcher: str | None) -> int:
    """Check every job of a sweep, then run them through the one runner (``scorelift.multirun``).
    Nothing runs or is written unless every job that is to run passes its checks (exit 2 otherwise)."""
    from .checks import check_inputs
    from .jobs import is_finished
    from .jobs.folder import resumable_segments
    from .multirun import check_sweep_folder, run_sweep, sweep_jobs_of

    sweep_dir = Path(str(OmegaConf.select(configs[0], "hydra.sweep.dir"))).absolute()
    jobs = sweep_jobs_of(job_overrides)
    check_sweep_folder(sweep_dir, jobs)
    for job, cfg in zip(jobs, configs):
        if is_finished(sweep_dir, job):
            continue
        cfg = job_config(cfg)
        run_dir = job.folder(sweep_dir) / "run"
        if resumable_segments(sweep_dir, job) is not None:  # the runner resumes it: check it as a resume
            with open_dict(cfg):
                cfg.resume = str(run_dir)
            check_inputs(cfg, run_dir)
        else:  # the runner starts it afresh, in a folder it clears first
            check_inputs(cfg, None)
    return run_sweep(sweep_dir, jobs, launcher, configs[0].hydra)


def check_launcher(choice: str | None, multirun: bool, submitit: tuple[str, ...]) -> str | None:
    """The sweep's launcher: None or ``basic`` (here, one run after another) or a submitit one."""
    if choice is None:
        return None
    if not multirun:
        raise ConfigError(f"hydra/launcher={choice} launches the runs of a sweep; add -m (e.g. `scorelift -m "
                          f"hydra/launcher={choice} seed=0,1,2`), or leave it out for a single run.")
    if choice != "basic" and choice not in submitit:
        raise ConfigError(f"hydra/launcher={choice}: scorelift runs a sweep here one run after another (basic, the "
                          f"default) or as submitit jobs ({', '.join(submitit)}).")
    return None if choice == "basic" else choice
