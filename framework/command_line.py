"""The command line of ``scorelift`` / ``python launch.py``: flags, ``resume=``, sweeps, ``--list``.

    scorelift [--list] [--cfg {job,hydra,all}] [-m] key=value ...

Overrides are Hydra's (``group=option``, ``key=value``, ``+key=value``, ``~key``); with ``-m`` a
comma list (``seed=0,1,2``) or ``range(...)`` sweeps, one run per combination.
``resume=<run dir or ckpt>`` re-applies the run's saved overrides (``.hydra/overrides.yaml``)
under the new ones and writes into the same run directory.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import registry
from .errors import ConfigError

# Saved overrides a resume does not carry over: they name this invocation, not the run.
KEYS_NOT_CARRIED = ("resume=", "mode=", "hydra.run.dir=", "+resume=", "viewer=", "viewer.")
# Shorthands: ``viewer=true`` opens the viewer (the section's ``enabled``; its other keys stay).
SHORTHANDS = {"viewer=true": "viewer.enabled=true", "viewer=false": "viewer.enabled=false"}

EPILOG = """examples:
  scorelift system=sjc guidance=paas                        the main job (SJC on the embedded prior)
  scorelift system=dreamfusion guidance=sds prompt="a blue torus" seed=3
  scorelift resume=outputs/sjc-paas/a_red_cube@20261123-101500 trainer.max_steps=20000
  scorelift mode=export resume=outputs/sjc-paas/a_red_cube@20261123-101500
  scorelift -m guidance=sds,ssd seed=0,1,2                  six runs, one after another
  scorelift -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu guidance=sds,ssd seed=0,1,2
                                                            the six as one SLURM job array
  scorelift --cfg job system=dreamfusion                    print the composed config, run nothing
  scorelift --list                                          every registered part
  scorelift system=sjc guidance=paas viewer=true            train, watching it in the browser (port 7007)
  scorelift view outputs/sjc-paas/a_red_cube@20261123-101500  look at a finished or running run

Bad input exits with code 2 and one paragraph, before anything is written."""


@dataclass
class CommandLine:
    overrides: list[str]
    list_parts: bool
    show_cfg: str | None  # job | hydra | all: print the config and stop
    multirun: bool


def parse_command_line(argv: list[str]) -> CommandLine:
    parser = argparse.ArgumentParser(
        prog="scorelift",
        description="Text-to-3D by score distillation (SJC, SDS, SSD, VSD); configured by Hydra overrides.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="group=option or key=value (Hydra override syntax)")
    parser.add_argument("--list", "--list-plugins", dest="list_parts", action="store_true",
                        help="list every registered part (built-in and installed plugins) and the presets")
    parser.add_argument("--cfg", "-c", choices=("job", "hydra", "all"), default=None,
                        help="print the composed config (job: the run's; hydra: the hydra node; all: both) and stop")
    parser.add_argument("--multirun", "-m", action="store_true", help="sweep: one run per combination of comma lists")
    args = parser.parse_intermixed_args(argv)  # flags may stand anywhere among the overrides
    overrides = [SHORTHANDS.get(o.lower(), o) for o in args.overrides]
    return CommandLine(overrides, args.list_parts, args.cfg, args.multirun)


# ------------------------------------------------------------------------------ resume
def resume_run_dir(value: str) -> Path:
    """The run directory named by ``resume=value`` (a run dir, or a .ckpt inside one)."""
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(
            f"resume={value!r} does not exist. Pass a run directory (e.g. outputs/sjc-paas/a_red_cube@...) "
            f"or a checkpoint file inside one."
        )
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def resumed_dir(overrides: list[str]) -> Path | None:
    """The run directory that ``resume=`` names in ``overrides`` (None when there is none)."""
    resume = [a for a in overrides if a.startswith("resume=")]
    if not resume:
        return None
    value = resume[-1].split("=", 1)[1].strip("'\"")
    if value in ("", "null", "None"):
        return None
    return resume_run_dir(value)


def saved_config_only(overrides: list[str]) -> Path | None:
    """The resumed run's ``config.yaml`` when it is all that is left of its config (``.hydra/``
    is gone): the run is then composed from it (``compose.compose_saved``). None otherwise."""
    run_dir = resumed_dir(overrides)
    if run_dir is None or (run_dir / ".hydra" / "overrides.yaml").is_file():
        return None
    config = run_dir / "config.yaml"
    return config if config.is_file() else None


def expand_resume(overrides: list[str]) -> list[str]:
    """``overrides`` with the resumed run's saved overrides first and hydra.run.dir pointed at it."""
    run_dir = resumed_dir(overrides)
    if run_dir is None:
        return overrides
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        raise ConfigError(
            f"resume={run_dir}: {str(run_dir)!r} is not a scorelift run directory (no .hydra/overrides.yaml and "
            f"no config.yaml)."
        )
    saved = [o for o in yaml.safe_load(saved_file.read_text()) or [] if not o.startswith(KEYS_NOT_CARRIED)]
    explicit_dir = any(a.startswith("hydra.run.dir=") for a in overrides)
    extra = [] if explicit_dir else [f"hydra.run.dir='{run_dir.as_posix()}'"]
    return saved + overrides + extra


def saved_overrides(overrides: list[str]) -> list[str]:
    """What a run saves in .hydra/overrides.yaml: the overrides of the run itself, not Hydra's."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


# ------------------------------------------------------------------------------ sweeps
def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """One override list per combination of the sweep overrides (``a=1,2 b=x,y``: four jobs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from .compose import parse_error

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        raise parse_error(overrides) from None
    # Keyed as Hydra's basic sweeper keys them (a key given twice: its place, the last value), so that
    # job N is the combination Hydra's own multirun would number N.
    choices: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [override.input_line]
    return [list(job) for job in itertools.product(*choices.values())]


# ------------------------------------------------------------------------------ --list
# How each kind of part is chosen on the command line, as --list shows it.
HOW_CHOSEN = {
    "geometry": "geometry=...",
    "renderer": "renderer=...",
    "background": "background=...",
    "guidance": "guidance=...",
    "loss": "+system.losses.<name>={} +system.loss_weights.lambda_<name>=<weight>",
    "prior": "prior=...",
    "evaluator": "scores the runs whose prompt it knows",
}


def part_summary(cls) -> str:
    """A part's one line: its own ``summary`` attribute (docs/plugins.md), else the first sentence
    of its own docstring (not one it inherits: a subclass's parent describes another part)."""
    from .compose import first_sentence

    own = vars(cls) if isinstance(cls, type) else {"summary": getattr(cls, "summary", None)}
    return own.get("summary") or first_sentence(own.get("__doc__"))


def format_plugin_list() -> str:
    """Every system preset and every registered part by kind, each with its one line and (parts)
    where it came from; the YAML presets of a group beside its parts."""
    from . import __version__
    from .compose import yaml_presets

    registered = registry.available()
    lines = [f"scorelift {__version__}: a run is a system preset and its parts, each chosen with group=name, "
             f"e.g. `scorelift system=sjc guidance=paas`; `scorelift --cfg job <overrides>` prints a composed run.",
             "", "system (system=...): the methods, each a preset of parts and settings"]
    lines += [f"  {name:<20} {summary}" for name, summary in yaml_presets("system").items()]
    for kind, entries in registered.items():
        if kind == "system":
            continue
        lines += ["", f"{kind} ({HOW_CHOSEN.get(kind, kind + '=...')}):"]
        lines += [f"  {name:<20} {summary}  [preset]" for name, summary in yaml_presets(kind).items()
                  if name not in entries]
        lines += [f"  {name:<20} {part_summary(entry.cls)}  [{entry.origin}]" for name, entry in entries.items()]
    lines += ["", "system classes (system.type=...; every preset above builds one):"]
    lines += [f"  {name:<20} {part_summary(entry.cls)}  [{entry.origin}]" for name, entry in registered["system"].items()]
    failures = registry.load_failures()
    if failures:  # installed plugins that failed to import or register; everything else works
        lines += ["", "plugins that failed to load:"]
        lines.extend(f"  {f}" for f in failures)
    return "\n".join(lines)
