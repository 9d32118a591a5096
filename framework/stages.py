"""Runs in stages: one job, one run folder, a run per stage, each started from the one before.

A staged system preset (``system=magic3d``) lists its stages in the config's ``stages``: each a
name, the overrides that make the stage's run (usually a system preset of its own), and its
``share`` of a step budget. The job runs them in turn, stage S in ``<run dir>/<S>/``, a complete
run directory of its own (config, checkpoints, logs, turntable, metrics, export); a stage's first
step is built from the last checkpoint of the stage before it (``init_from``, see
``scorelift.init_from``), the first stage's from the job's own ``init_from`` if it has one.

    scorelift system=magic3d prompt="a red cube"          # coarse, then fine
    scorelift resume=outputs/magic3d-sds/a_red_cube@...   # continues in the stage it stopped in
    scorelift --cfg job system=magic3d                    # every stage's config

The command line's overrides apply to every stage (``guidance=ssd`` guides both), except
``trainer.max_steps=N``, which is the job's budget: stage k trains ``share_k * N`` steps, and
``stages.<name>.<key>=value``, which sets a key of stage <name> only
(``stages.coarse.geometry.resolution=64``, ``stages.fine.trainer.max_steps=300``). Every
stage's config is composed and checked before the first trains, so a job that could not finish
says so, exit 2, before anything is written. A stop signal in any stage checkpoints that stage
(exit 75); ``resume=<run dir>`` skips the finished stages and resumes that one.

``<run dir>/stages.json`` records the stages; ``<run dir>/.hydra/overrides.yaml`` the job's
command line, which ``resume=`` re-applies. A finished job also holds, at its top, what readers
of a one-stage run look for: the last stage's ``metrics.json`` (every stage's under "stages"), a
``timing.json`` over all stages, and the last stage's turntable and grid.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from .atomic import write_text_atomic
from .command_line import KEYS_NOT_CARRIED, saved_overrides
from .errors import ConfigError

log = logging.getLogger(__name__)

STAGES_FILE = "stages.json"
# What the stages do not take from the job's command line: the job's own folder, resume and mode
# (the job decides them per stage), and the system (each stage names its own).
NOT_FOR_STAGES = (*KEYS_NOT_CARRIED, "system=", "init_from=", "+init_from=", "trainer.max_steps=")


@dataclass
class Stage:
    """One stage of a job: its number, name, folder, overrides (what its run saves), and composed
    job config (without the hydra node)."""

    number: int
    name: str
    run_dir: Path
    overrides: list[str]
    cfg: DictConfig

    def state(self) -> str:
        """finished, started (has a run folder: resume it) or new."""
        info = self.run_dir / "run_info.json"
        if info.is_file():
            try:
                invocations = json.loads(info.read_text()).get("invocations", [])
            except ValueError:
                invocations = []
            trained = [i for i in invocations if i.get("mode") == "train"]
            if trained and trained[-1].get("status") == "finished":
                return "finished"
        return "started" if (self.run_dir / "config.yaml").is_file() else "new"


def stage_specs(cfg: DictConfig) -> list[dict]:
    """The checked ``stages`` of a config ([] for an ordinary run)."""
    specs = OmegaConf.to_container(cfg.stages, resolve=True) if OmegaConf.select(cfg, "stages") else []
    names = []
    for k, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ConfigError(f"stages[{k}] must be a mapping with a name (and overrides, share): got {spec!r}.")
        if not all(isinstance(o, str) for o in spec.get("overrides", [])):
            raise ConfigError(f"stages[{k}] ({spec['name']}): overrides must be a list of key=value strings.")
        share = spec.get("share", 1.0 / len(specs))
        if not isinstance(share, (int, float)) or not share > 0:
            raise ConfigError(f"stages[{k}] ({spec['name']}): share={share!r} must be a positive number.")
        names.append(spec["name"])
    if len(set(names)) != len(names):
        raise ConfigError(f"The stages' names must differ (they name the stages' folders): {names}.")
    return specs


def split_stage_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the overrides for the whole job, the ``stages.<name>.<key>=value`` ones, for one stage)."""
    scoped = [o for o in overrides if o.startswith("stages.") and "=" in o and "." in o.split("=", 1)[0][7:]]
    return [o for o in overrides if o not in scoped], scoped


def scoped_overrides(scoped: list[str], names: list[str]) -> dict[str, list[str]]:
    """Stage name -> its own overrides (``stages.fine.trainer.max_steps=200`` ->
    ``trainer.max_steps=200`` for stage fine); ConfigError for a stage the job does not have."""
    per_stage: dict[str, list[str]] = {name: [] for name in names}
    for override in scoped:
        name, rest = override[len("stages."):].split(".", 1)
        if name not in per_stage:
            raise ConfigError(f"{override}: this job has no stage {name!r}; its stages are {', '.join(names)}.")
        per_stage[name].append(rest)
    return per_stage


def stage_budgets(specs: list[dict], total: int) -> list[int]:
    """``total`` steps split in proportion to the stages' shares (at least 1 each; the last stage
    takes what rounding leaves)."""
    shares = [float(s.get("share", 1.0 / len(specs))) for s in specs]
    whole = sum(shares)
    budgets = [max(1, round(total * share / whole)) for share in shares[:-1]]
    budgets.append(max(1, total - sum(budgets)))
    return budgets


def given_steps(overrides: list[str]) -> int | None:
    """The job's ``trainer.max_steps=N`` (the last one given), or None."""
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("trainer.max_steps=")]
    if not values:
        return None
    try:
        return int(values[-1])
    except ValueError:
        raise ConfigError(f"trainer.max_steps={values[-1]!r} must be a whole number of steps (the job's budget, "
                          f"split between its stages).") from None


def stage_key_hint(message: str, stage: str, names: list[str]) -> str:
    """For an unknown key while composing stage ``stage``: a key given without a stage applies to
    every stage, and each stage has its own parts (the splats' geometry is not the mesh's)."""
    import re

    key = re.match(r"Unknown config key '([^']+)'", message)
    if key is None:
        return ""
    return (f" (That was stage '{stage}' of this run's stages {', '.join(names)}: a key given without a stage "
            f"applies to every stage. Set one stage's key as stages.<stage>.<key>, e.g. "
            f"stages.{names[0]}.{key.group(1)}=...; `scorelift --cfg job` prints every stage.)")


def compose_stages(job_cfg: DictConfig, job_overrides: list[str], run_dir: Path) -> list[Stage]:
    """Every stage's config, composed from the job's command line and the stage's overrides."""
    from .compose import compose_config

    specs = stage_specs(job_cfg)
    plain, scoped = split_stage_overrides(saved_overrides(job_overrides))
    per_stage = scoped_overrides(scoped, [s["name"] for s in specs])
    own = [o for o in plain if not o.startswith(NOT_FOR_STAGES)]
    steps = given_steps(plain)
    if steps is not None and steps < len(specs):
        names = ", ".join(s["name"] for s in specs)
        raise ConfigError(f"trainer.max_steps={steps} is the job's budget, split between its {len(specs)} stages "
                          f"({names}): give at least one step per stage, i.e. trainer.max_steps >= {len(specs)}.")
    budgets = stage_budgets(specs, steps) if steps is not None else [None] * len(specs)
    stages = []
    for number, (spec, budget) in enumerate(zip(specs, budgets)):
        overrides = [*own, *spec.get("overrides", []), "stages=[]"]
        if budget is not None:
            overrides.append(f"trainer.max_steps={budget}")
        overrides += per_stage[spec["name"]]  # last: a stage's own settings win
        try:
            composed = compose_config(overrides)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{stage_key_hint(str(exc), spec['name'], [s['name'] for s in specs])}") from None
        cfg = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])
        stages.append(Stage(number, spec["name"], run_dir / spec["name"], overrides, cfg))
    return stages


def check_stages(stages: list[Stage], job_cfg: DictConfig) -> list:
    """Each stage's run plan (None for a finished stage), checked before any stage trains: a
    started stage as a resume, a new one as a start from the stage before it (or from the job's
    ``init_from``)."""
    from .checks import check_inputs

    plans = []
    for stage in stages:
        state = stage.state()
        if state == "finished":
            plans.append(None)
            continue
        cfg = stage.cfg
        with open_dict(cfg):
            if state == "started":
                cfg.resume = str(stage.run_dir)
            elif stage.number == 0:
                cfg.init_from = OmegaConf.select(job_cfg, "init_from")
            else:
                cfg.init_from = str(stages[stage.number - 1].run_dir)
        before = stages[stage.number - 1] if stage.number else None
        source_cfg = before.cfg if state == "new" and before is not None and before.state() != "finished" else None
        plans.append(check_inputs(cfg, stage.run_dir, init_source_cfg=source_cfg))
    return plans


def write_job_records(run_dir: Path, job_overrides: list[str] | None, stages: list[Stage]) -> None:
    """The job's own files: its command line (for ``resume=``) and the list of its stages."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    if job_overrides is not None:
        write_text_atomic(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(list(job_overrides), default_flow_style=False))
    write_text_atomic(run_dir / STAGES_FILE, json.dumps({"stages": [
        {"name": s.name, "folder": s.name, "overrides": s.overrides} for s in stages]}, indent=2))


def run_stages(job_cfg: DictConfig, job_overrides: list[str] | None, run_dir: Path) -> dict:
    """Run the job's stages in turn (``scorelift.launcher`` calls it for a config with stages);
    RunStopped from the stage a stop signal reached (its checkpoint written)."""
    stages = compose_stages(job_cfg, job_overrides or [], run_dir)
    if job_cfg.mode != "train":
        return run_last_stage(job_cfg, stages)
    if (run_dir / STAGES_FILE).is_file() and not job_cfg.resume:
        raise ConfigError(f"The run directory {str(run_dir)!r} already holds a staged run; continue it with "
                          f"resume={run_dir}, or start the new one elsewhere.")
    plans = check_stages(stages, job_cfg)
    from .run import run  # (Lightning: imported once the stages passed their checks)

    write_job_records(run_dir, job_overrides, stages)
    results = {}
    for stage, plan in zip(stages, plans):
        if plan is None:
            log.info("Stage %d of %d (%s) finished before: %s", stage.number + 1, len(stages), stage.name, stage.run_dir)
            continue
        log.info("Stage %d of %d: %s, in %s", stage.number + 1, len(stages), stage.name, stage.run_dir)
        results[stage.name] = run(stage.cfg, stage.run_dir, overrides=stage.overrides, plan=plan)
    write_job_summary(run_dir, stages)
    return results


def write_job_summary(run_dir: Path, stages: list[Stage]) -> None:
    """What a reader of a finished job looks for at its top, as for a one-stage run: the last
    stage's metrics.json (with every stage's under "stages"), a timing.json over all stages, and
    the last stage's turntable and grid."""
    import shutil
    import statistics

    from .jobs.folder import read_json  # the job runner's reader (imported here: start-up needs none of it)

    metrics = {s.name: m for s in stages if (m := read_json(s.run_dir / "metrics.json")) is not None}
    last = stages[-1]
    if last.name in metrics:
        write_text_atomic(run_dir / "metrics.json",
                          json.dumps({**metrics[last.name], "stage": last.name, "stages": metrics}, indent=2))
    timings = {s.name: t for s in stages if (t := read_json(s.run_dir / "timing.json")) is not None}
    if len(timings) == len(stages):
        steps = [x for t in timings.values() for x in t.get("step_seconds", [])]
        peaks = [t["peak_memory_bytes"] for t in timings.values() if t.get("peak_memory_bytes") is not None]
        total = {
            "steps_timed": sum(t.get("steps_timed", 0) for t in timings.values()),
            "median_s_per_it": statistics.median(steps) if steps else None,
            "mean_s_per_it": statistics.fmean(steps) if steps else None,
            "train_wall_s": sum(t.get("train_wall_s") or 0.0 for t in timings.values()),
            "train_steps_s": sum(t.get("train_steps_s") or 0.0 for t in timings.values()),
            "peak_memory_bytes": max(peaks) if peaks else None,
            "peak_memory_kind": timings[last.name].get("peak_memory_kind"),
            "final_loss": timings[last.name].get("final_loss"),
            "device": timings[last.name].get("device"),
            "stages": {name: {k: v for k, v in t.items() if k != "step_seconds"} for name, t in timings.items()},
        }
        write_text_atomic(run_dir / "timing.json", json.dumps(total, indent=2))
    for name in ("turntable.mp4", "turntable.gif", "turntable_strip.png", "grid.png"):
        source = last.run_dir / name
        if source.is_file():
            partial = run_dir / f".{name}.tmp"
            shutil.copyfile(source, partial)
            partial.replace(run_dir / name)  # atomic: a reader never sees half a file


def run_last_stage(job_cfg: DictConfig, stages: list[Stage]) -> dict:
    """mode=test or mode=export of a staged run: the last stage's run re-rendered or exported."""
    from .checks import check_inputs

    stage = next((s for s in reversed(stages) if s.state() != "new"), None)
    if stage is None:
        raise ConfigError(f"mode={job_cfg.mode}: no stage of this run has started, so there is nothing to "
                          f"{'re-render' if job_cfg.mode == 'test' else 'export'}.")
    cfg = stage.cfg
    with open_dict(cfg):
        cfg.mode = job_cfg.mode
        cfg.resume = str(stage.run_dir)
        cfg.export = job_cfg.export
    plan = check_inputs(cfg, stage.run_dir)
    from .run import run  # (Lightning: imported once the checks passed)

    return run(cfg, stage.run_dir, overrides=None, plan=plan)


def show_stages(job_cfg: DictConfig, job_overrides: list[str], run_dir: Path) -> str:
    """Every stage's job config as YAML, each under a comment naming the stage (``--cfg job``)."""
    stages = compose_stages(job_cfg, job_overrides, run_dir)
    parts = []
    for stage in stages:
        parts.append(f"# stage {stage.number + 1} of {len(stages)}: {stage.name} (in {stage.run_dir})\n"
                     + OmegaConf.to_yaml(stage.cfg))
    return "\n".join(parts)
