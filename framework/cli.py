"""Command-line plumbing around Hydra: plugin listing and ``resume=`` handling.

``resume=<run dir or ckpt>`` re-composes the run's saved overrides (``.hydra/overrides.yaml``)
with the new ones and writes into the same run directory, so a resumed run has the same config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from framework import builders, registry
from framework.errors import ConfigError

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


def fail(exc: Exception) -> None:
    print(f"scorelift: error: {exc}", file=sys.stderr)
    sys.exit(2)
