"""scorelift's one start-up path (``scorelift``, ``python -m scorelift``, ``python launch.py``).

    command line -> compose once (Hydra's Compose API) -> check once -> build -> create the run
    directory -> train / re-render / export

Nothing is written before the config has been composed and checked and the parts have been
built, so bad input exits with code 2 and one paragraph and leaves nothing behind. A sweep
(``-m``) composes and checks every run before the first one starts, then runs them here, one
after another, or as submitit jobs (``hydra/launcher=submitit_local|submitit_slurm``, see
``scorelift.multirun``). Exit codes: 0 finished, 2 bad input, 74 a write found no space, 75
stopped by a signal with a checkpoint ("resume me"); see ``scorelift.errors``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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


def fail(exc: ScoreliftError) -> int:
    """One paragraph on stderr; the exit code that says what happened (``scorelift.errors``)."""
    what = "stopped" if isinstance(exc, RunStopped) else "error"
    print(f"scorelift: {what}: {exc}", file=sys.stderr)
    return getattr(exc, "exit_code", EXIT_BAD_INPUT)


def run_dir_of(cfg: DictConfig, sweep_index: int | None = None, sweep_dir: Path | None = None) -> Path:
    """Where a run writes: ``hydra.run.dir`` (default ``outputs/<system>-<guidance>/<prompt>@<time>``),
    or ``<hydra.sweep.dir>/<index>`` for a run of a sweep."""
    try:
        if sweep_index is not None:
            return (sweep_dir or Path(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(sweep_index)
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
    return compose_config(expanded), saved_overrides(expanded)


def main(argv: list[str] | None = None) -> int:
    from .checks import check_inputs
    from .library_noise import quiet_known_library_noise
    from .multirun import SUBMITIT_LAUNCHERS, launcher_choice, report, run_on_submitit, sweep_job_plan
    from .run import run

    args = parse_command_line(sys.argv[1:] if argv is None else argv)
    if args.list_parts:
        print(format_plugin_list())
        return 0
    quiet_known_library_noise()
    try:
        launcher = check_launcher(launcher_choice(args.overrides), args.multirun, SUBMITIT_LAUNCHERS)
        jobs = sweep_jobs(args.overrides) if args.multirun else [args.overrides]
        composed = [compose_job(job) for job in jobs]
        configs = [cfg for cfg, _ in composed]
        if args.show_cfg:
            for cfg in configs:
                keys = {"job": [k for k in cfg if k != "hydra"], "hydra": ["hydra"], "all": list(cfg)}[args.show_cfg]
                print(OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, keys)))
            return 0
        sweep_dir = None
        if args.multirun:
            sweep_dir = Path(str(OmegaConf.select(configs[0], "hydra.sweep.dir")))
        run_dirs = [run_dir_of(cfg, i if args.multirun else None, sweep_dir) for i, cfg in enumerate(configs)]
        configs = [job_config(cfg) for cfg in configs]
        # A sweep folder given again resumes: finished jobs are skipped, stopped ones continue.
        plans = ([sweep_job_plan(cfg, run_dir, overrides or []) for cfg, run_dir, (_, overrides) in zip(configs, run_dirs, composed)]
                 if args.multirun else ["new"])
        # Each job's run plan, checked before any job starts (None: a finished job, skipped).
        run_plans = [None if plan == "skip" else check_inputs(cfg, run_dir)
                     for cfg, run_dir, plan in zip(configs, run_dirs, plans)]
    except ScoreliftError as exc:
        return fail(exc)

    setup_console_logging()
    if args.multirun and set(plans) == {"skip"}:  # every job finished before: nothing to run or submit
        return report([{"run_dir": str(d), "status": "skipped", "message": "finished before"} for d in run_dirs], sweep_dir)
    if launcher in SUBMITIT_LAUNCHERS:
        return run_on_submitit(args.overrides, sweep_dir, launcher)
    for (_, overrides), cfg, run_dir, run_plan in zip(composed, configs, run_dirs, run_plans):
        if run_plan is None:
            print(f"scorelift: {run_dir} holds a finished run of this job: skipped.", file=sys.stderr)
            continue
        try:
            run(cfg, run_dir, overrides=overrides, plan=run_plan)
        except ScoreliftError as exc:
            return fail(exc)
    return 0


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
