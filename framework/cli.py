"""Command-line plumbing around Hydra: plugin listing, ``resume=`` handling and the start-up check.

``resume=<run dir or ckpt>`` re-composes the run's saved overrides (``.hydra/overrides.yaml``)
with the new ones and writes into the same run directory, so a resumed run has the same config.

``check_command_line`` composes the config as Hydra will and runs every check that needs no
model weights *before* Hydra creates the run directory, so bad input (an unknown name or key, a
wrong type, an empty or too long prompt, a missing model, a render size the prior cannot take,
inverted camera ranges, a bad resume) fails with one paragraph and nothing written.
``RunDirGuard`` undoes what Hydra and the run's start wrote if the run still fails before training.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from framework import builders, registry
from framework.errors import ConfigError, ScoreliftError

KEYS_NOT_CARRIED = ("resume=", "mode=", "hydra.run.dir=", "+resume=")


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


def expand_resume(argv: list[str]) -> list[str]:
    """argv with the resumed run's saved overrides prepended and hydra.run.dir pointed at it."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    value = resume[-1].split("=", 1)[1].strip("'\"")
    if value in ("", "null", "None"):
        return argv
    run_dir = resume_run_dir(value)
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        raise ConfigError(
            f"resume={value!r}: {str(run_dir)!r} is not a scorelift run directory (no .hydra/overrides.yaml)."
        )
    saved = [o for o in yaml.safe_load(saved_file.read_text()) or [] if not o.startswith(KEYS_NOT_CARRIED)]
    explicit_dir = any(a.startswith("hydra.run.dir=") for a in argv)
    extra = [] if explicit_dir else [f"hydra.run.dir='{run_dir.as_posix()}'"]
    return saved + argv + extra


def plugin_config_roots() -> list[Path]:
    """Config folders shipped by third-party plugins, for Hydra's search path.

    A plugin class whose ``config_file`` is ``<root>/<kind>/<name>.yaml`` contributes ``<root>``,
    so ``<kind>=<name>`` composes its file like a built-in one (docs/plugins.md).
    """
    roots: list[Path] = []
    for kind, entries in registry.available().items():
        for name, entry in entries.items():
            own = getattr(entry.cls, "config_file", None)
            if own is None:
                continue
            path = Path(own).resolve()
            if path.parent.name == kind and path.stem == name and path.parent.parent not in roots:
                roots.append(path.parent.parent)
    return roots


def with_plugin_searchpath(argv: list[str]) -> list[str]:
    """argv plus ``hydra.searchpath=[...]`` naming the plugins' config folders (if any, and if the
    user did not set the search path themselves)."""
    if any(a.startswith(("hydra.searchpath=", "+hydra.searchpath=")) for a in argv):
        return argv
    roots = plugin_config_roots()
    if not roots:
        return argv
    return argv + ["hydra.searchpath=[" + ",".join(f"file://{r}" for r in roots) + "]"]


def format_plugin_list() -> str:
    """Every registered plugin by kind, with where it came from."""
    lines = []
    for kind, entries in registry.available().items():
        lines.append(f"{kind}:")
        for name, entry in entries.items():
            doc = (entry.cls.__doc__ or "").strip().splitlines()
            summary = doc[0] if doc else ""
            lines.append(f"  {name:<18} {summary}  [{entry.origin}]")
    groups = sorted(p.stem for p in (builders.CONFIG_DIR / "system").glob("*.yaml"))
    priors = sorted(p.stem for p in (builders.CONFIG_DIR / "prior").glob("*.yaml"))
    lines.append(f"system presets (system=...): {', '.join(groups)}")
    lines.append(f"prior presets (prior=...): {', '.join(priors)}")
    failures = registry.load_failures()
    if failures:
        lines.append("plugins that failed to load:")
        lines.extend(f"  {f}" for f in failures)
    return "\n".join(lines)


def handle_listing(argv: list[str]) -> bool:
    """Print the plugin list for ``--list``; True if it did (the caller then exits)."""
    if "--list" in argv or "--list-plugins" in argv:
        print(format_plugin_list())
        return True
    return False


# ------------------------------------------------------------------------------ start-up check
@dataclass
class Checked:
    """The command line to hand to Hydra, and the run directory it will write (pinned, so a failed
    start can be undone), or None (multirun, --cfg, --help, or a directory only Hydra can resolve)."""

    argv: list[str]
    run_dir: Path | None


def one_paragraph(text: str) -> str:
    """Hydra's multi-line messages as one paragraph, without the config search path listing."""
    text = text.split("Config search path:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def find_override(overrides: list[str], key: str) -> str | None:
    """The last command-line override that sets ``key`` (a config key or a group)."""
    hits = [o for o in overrides if override_key(o).split("@", 1)[0] == key]
    return hits[-1] if hits else None


def root_config_layout(config_name: str) -> tuple[list[str], list[str]]:
    """(the keys, the config groups picked by the defaults list) of configs/<config_name>.yaml."""
    path = builders.CONFIG_DIR / f"{config_name}.yaml"
    data = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    groups = []
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for key in entry:
                name = key.split()[-1].split("@", 1)[0].lstrip("/")
                if name not in groups:
                    groups.append(name)
    return [k for k in data if k != "defaults"], groups


def group_options(group: str) -> list[str]:
    """The YAML files of config group ``group``: configs/<group>/ and the plugins' config folders."""
    names = set()
    for root in [builders.CONFIG_DIR, *plugin_config_roots()]:
        names.update(p.stem for p in (root / group).glob("*.yaml"))
    return sorted(names)


def composition_error(exc: Exception, overrides: list[str], config_name: str) -> ConfigError:
    """One paragraph for a Hydra composition failure, naming the override and what is allowed."""
    from hydra.errors import MissingConfigException

    message = str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in str(exc.missing_cfg_file):
        group, name = str(exc.missing_cfg_file).rsplit("/", 1)
        options = list(exc.options or group_options(group))
        given = find_override(overrides, group) or f"{group}={name}"
        where = re.match(r"In '([^']+)'", message)
        asked = f" (asked for by {where.group(1)!r})" if where and where.group(1) != config_name else ""
        return ConfigError(
            f"{given}: the config group {group!r} has no option {name!r}{asked}. The options are: "
            f"{', '.join(options) or '(none)'} (YAML files in configs/{group}/ or in an installed plugin's "
            f"config folder; python launch.py --list shows the plugins)."
        )
    cause = exc.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key and "is not in struct" in str(cause):
        parent_key = str(full_key).rsplit(".", 1)[0] if "." in str(full_key) else ""
        parent = getattr(cause, "parent_node", None)
        keys = ", ".join(str(k) for k in parent.keys() if parent_key or k != "hydra") if parent is not None else "?"
        given = find_override(overrides, str(full_key))
        shown = f" (in the override {given!r})" if given else ""
        return ConfigError(
            f"Unknown config key {str(full_key)!r}{shown}. The keys of "
            f"{('the ' + repr(parent_key) + ' section') if parent_key else 'the root config'} are: {keys}. "
            f"Check the spelling; `python launch.py --cfg job` prints the whole config."
        )
    match = re.match(r"Could not override '([^']+)'\. No match in the defaults list", message)
    if match:
        _, groups = root_config_layout(config_name)
        given = find_override(overrides, match.group(1)) or match.group(1)
        return ConfigError(
            f"{given}: {match.group(1)!r} is not a config group that the command line can pick; the groups "
            f"are: {', '.join(g for g in groups if g != 'preset')} (the preset follows from prior and system)."
        )
    reason = one_paragraph(message) or type(exc).__name__
    if cause is not None and str(cause) and str(cause).splitlines()[0] not in reason:
        reason += f" ({one_paragraph(str(cause))})"
    return ConfigError(f"The command line does not compose into a config: {reason}")


def parse_error(overrides: list[str]) -> ConfigError:
    """Which override Hydra's grammar rejects, and why."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as exc:
            return ConfigError(
                f"The override {override!r} cannot be parsed ({one_paragraph(str(exc))}). Write key=value; "
                f"quote values with spaces or commas, e.g. prompt='a red cube, front view'."
            )
    return ConfigError("The command line's overrides cannot be parsed; write them as key=value.")


def compose_checked(overrides: list[str], config_name: str = "config"):
    """The config Hydra will compose from ``overrides`` (with its hydra node), or a ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    import framework.resolvers  # noqa: F401

    try:
        with initialize_config_dir(config_dir=str(builders.CONFIG_DIR), version_base=None, job_name="launch"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except OverrideParseException:
        raise parse_error(overrides) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise composition_error(exc, overrides, config_name) from None


def check_root_keys(cfg, config_name: str) -> None:
    """``+foo=1`` adds a key Hydra cannot object to; nothing would read it, so it is a mistake."""
    keys, groups = root_config_layout(config_name)
    if not keys:
        return  # a config this check does not know the layout of
    allowed = set(keys) | set(groups) | {"hydra"}
    unknown = [k for k in cfg.keys() if k not in allowed]
    if unknown:
        shown = ", ".join(k for k in [*keys, *groups] if k not in ("preset", "hydra"))
        raise ConfigError(
            f"Unknown config key(s) {', '.join(repr(str(k)) for k in unknown)} at the top of the config. "
            f"The keys there are: {shown}. Check the spelling; `python launch.py --cfg job` prints the whole config."
        )


def resolved_run_dir(cfg) -> Path | None:
    """hydra.run.dir as Hydra will resolve it, if that needs nothing of Hydra's runtime."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001  (${hydra:...} and the like resolve only inside the run)
        return None
    if not isinstance(value, str) or not value or any(c in value for c in ("'", "\\", "$")):
        return None
    return Path(value)


def check_config(cfg, config_name: str, run_dir: Path | None) -> None:
    """Every check of a composed config that needs no model weights (framework.run.check_inputs)."""
    from omegaconf.errors import OmegaConfBaseException

    from framework.run import check_inputs

    check_root_keys(cfg, config_name)
    try:
        check_inputs(cfg, run_dir)
    except ScoreliftError:
        raise
    except OmegaConfBaseException as exc:
        raise ConfigError(f"The config cannot be resolved: {one_paragraph(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001  (a bug in a check must not block a run: its own checks remain)
        print(f"scorelift: warning: the start-up check failed ({type(exc).__name__}: {exc}); "
              f"going on with the run's own checks.", file=sys.stderr)


MAX_SWEEP_JOBS_CHECKED = 50


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Each multirun job's overrides as the basic sweeper will make them (at most
    MAX_SWEEP_JOBS_CHECKED; none for another sweeper or a sweep it expands itself)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        raise parse_error(overrides) from None
    hydra_part = [o.input_line for o in parsed if o.is_hydra_override()]
    if any(override_key(line).startswith(("hydra/sweeper", "hydra.sweeper")) for line in hydra_part):
        return []
    try:
        jobs = BasicSweeper.split_arguments([o for o in parsed if not o.is_hydra_override()], None)[0]
    except Exception:  # noqa: BLE001  (glob() and interval sweeps need the sweeper itself)
        return []
    return [hydra_part + list(job) for job in jobs[:MAX_SWEEP_JOBS_CHECKED]]


def check_command_line(argv: list[str]) -> Checked:
    """Compose and check what ``launch.py argv`` would run, before Hydra writes anything.

    Raises ConfigError (or PluginError / PriorLoadError) with one paragraph. --cfg and --info only
    get the composition check; --help, --config-path/--config-dir and --experimental-rerun none.
    A single run's directory is pinned (hydra.run.dir=<resolved>) so RunDirGuard knows it.
    """
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if any((args.help, args.hydra_help, args.shell_completion, args.experimental_rerun, args.config_path,
            args.config_dir)):
        return Checked(argv, None)
    config_name = args.config_name or "config"
    overrides = list(args.overrides)
    show_only = args.cfg is not None or args.info is not None
    if args.multirun:
        for job in sweep_jobs(overrides):
            cfg = compose_checked(job, config_name)
            if not show_only:
                check_config(cfg, config_name, None)
        return Checked(argv, None)
    cfg = compose_checked(overrides, config_name)
    if show_only:
        return Checked(argv, None)
    run_dir = resolved_run_dir(cfg)
    check_config(cfg, config_name, run_dir)
    if run_dir is None:
        return Checked(argv, None)
    pinned = [a for a in argv if not a.startswith(("hydra.run.dir=", "+hydra.run.dir=", "++hydra.run.dir="))]
    return Checked(pinned + [f"hydra.run.dir='{run_dir.as_posix()}'"], run_dir)


class RunDirGuard:
    """Undo a failed start: remove a run directory this launch created, or restore the files a
    start rewrites in an existing one (a resume): .hydra/*, config.yaml, run_info.json, launch.log.
    Nothing is undone once training has written a checkpoint."""

    FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "config.yaml",
             "run_info.json", "launch.log")

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir.absolute() if run_dir is not None else None
        if self.run_dir is None:
            return
        self.existed = self.run_dir.exists()
        self.created = []  # the run dir and its parents that this launch will create, innermost first
        path = self.run_dir
        while not path.exists() and path != path.parent:
            self.created.append(path)
            path = path.parent
        self.had_hydra_dir = (self.run_dir / ".hydra").is_dir()
        self.saved = {rel: self._read(self.run_dir / rel) for rel in self.FILES} if self.existed else {}
        self.ckpt = self._stamp()

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes() if path.is_file() else None
        except OSError:
            return None

    def _stamp(self):
        from framework.run import checkpoint_path

        try:
            st = checkpoint_path(self.run_dir).stat()
            return (st.st_size, st.st_mtime_ns)
        except OSError:
            return None

    def undo(self, run_dir: Path) -> None:
        if self.run_dir is None or Path(run_dir).absolute() != self.run_dir or self._stamp() != self.ckpt:
            return
        try:
            if not self.existed:
                shutil.rmtree(self.run_dir)
                for parent in self.created[1:]:
                    parent.rmdir()  # only if empty: a concurrent run may have written beside us
                return
            for rel, data in self.saved.items():
                path = self.run_dir / rel
                if data is None:
                    path.unlink(missing_ok=True)
                elif self._read(path) != data:
                    path.write_bytes(data)
            if not self.had_hydra_dir:
                (self.run_dir / ".hydra").rmdir()
        except OSError:
            pass


def fail(exc: Exception) -> None:
    print(f"scorelift: error: {exc}", file=sys.stderr)
    sys.exit(2)
