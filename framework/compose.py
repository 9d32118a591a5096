"""Composing the command line into one run config, through Hydra's public Compose API.

The root config is ``scorelift.configs/config.yaml``; its defaults list picks one option per
config group (geometry, renderer, background, guidance, system, prior, and the prior-and-system
preset). Config groups are searched in scorelift's own configs, in the config modules that installed
packages declare (entry-point group ``scorelift.configs``: the shapes world's prior and presets)
and in the config folders of third-party plugins (``plugin_config_roots``).

A failed composition becomes one ``ConfigError`` paragraph built from the exception's own fields
(the missing config and its options, the unknown key and its parent), not from its message text.
"""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import DictConfig, open_dict

from . import registry
from .errors import ConfigError

CONFIG_MODULE = "scorelift.configs"
# Packages that add options to the config groups declare their config module in this entry-point
# group (the shapes world's prior and presets live with the world, not in the core).
CONFIG_ENTRY_POINT_GROUP = "scorelift.configs"


def extra_config_modules() -> list[str]:
    """Config modules of installed packages (entry-point group ``scorelift.configs``)."""
    from importlib.metadata import entry_points

    return sorted({ep.value for ep in entry_points(group=CONFIG_ENTRY_POINT_GROUP)})


def config_root() -> Path:
    """The folder of scorelift's own config groups (inside the installed package)."""
    return Path(str(resources.files(CONFIG_MODULE)))


def search_roots() -> list[Path]:
    """Every folder whose ``<group>/<name>.yaml`` files are options of the config groups."""
    roots = [config_root(), *(Path(str(resources.files(m))) for m in extra_config_modules())]
    return roots + [r for r in plugin_config_roots() if r not in roots]


def plugin_config_roots() -> list[Path]:
    """Config folders shipped by third-party plugins.

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


def root_layout() -> tuple[list[str], list[str]]:
    """(the root config's keys, the config groups its defaults list picks)."""
    data = yaml.safe_load((config_root() / "config.yaml").read_text()) or {}
    groups = []
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for key in entry:
                name = key.split()[-1].split("@", 1)[0].lstrip("/")
                if name not in groups:
                    groups.append(name)
    return [k for k in data if k not in ("defaults", "hydra")], groups


def group_options(group: str) -> list[str]:
    """The options of config group ``group``: its YAML files in every search root, and the parts
    stored as structured configs from their ``Config`` dataclass (``registry.store_structured_config``)."""
    from hydra.core.config_store import ConfigStore

    names: set[str] = set()
    for root in search_roots():
        names.update(p.stem for p in (root / group).glob("*.yaml"))
    try:
        stored = ConfigStore.instance().list(group)
    except IOError:  # no part of this group is stored
        stored = []
    names.update(n[: -len(".yaml")] for n in stored if n.endswith(".yaml"))
    return sorted(names)


def first_sentence(text: str | None) -> str:
    """The first sentence of a docstring's first paragraph, its lines joined."""
    paragraph = " ".join((text or "").strip().split("\n\n")[0].split())
    head, dot, _ = paragraph.partition(". ")
    return head + "." if dot else paragraph


def yaml_presets(group: str) -> dict[str, str]:
    """The YAML options of config group ``group`` in every search root, each with its one line:
    the file's ``# summary: ...`` comment, else the first sentence of its leading comments."""
    found: dict[str, str] = {}
    for root in search_roots():
        for path in sorted((root / group).glob("*.yaml")):
            comments = []
            for line in path.read_text().splitlines():
                if not line.startswith("#"):
                    break
                comments.append(line.lstrip("#").strip())
            summary = next((c.split(":", 1)[1].strip() for c in comments if c.startswith("summary:")), None)
            found.setdefault(path.stem, summary or first_sentence(
                "\n".join(c for c in comments if not c.startswith("@package"))))
    return dict(sorted(found.items()))


def override_key(override: str) -> str:
    """``+data.foo=1`` -> ``data.foo``; ``guidance@x=sds`` -> ``guidance``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def find_override(overrides: list[str], key: str) -> str | None:
    """The last command-line override that sets ``key`` (a config key or a group)."""
    hits = [o for o in overrides if override_key(o) == key]
    return hits[-1] if hits else None


def check_override_targets(overrides: list[str]) -> None:
    """A ``name=value`` whose name is neither a root key nor a config group is a mistake that
    Hydra would only reject with its own wording; say which groups and keys exist."""
    keys, groups = root_layout()
    for override in overrides:
        key = override_key(override)
        if ("." in key or override.startswith(("+", "~")) or key in keys or key in groups or key == "hydra"
                or key.startswith("hydra/")):  # Hydra's own groups: hydra/launcher=submitit_slurm
            continue
        raise ConfigError(
            f"{override}: {key!r} is neither a config group that the command line can pick nor a key of the "
            f"root config. The groups are: {', '.join(g for g in groups if g != 'preset')} (the preset follows "
            f"from prior and system); the keys are: {', '.join(keys)}."
        )


def parse_error(overrides: list[str]) -> ConfigError:
    """Which override Hydra's grammar rejects."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            return ConfigError(
                f"The override {override!r} cannot be parsed. Write key=value; quote values with spaces or "
                f"commas, e.g. prompt='a red cube, front view', and lists as data.elevation_range=[-10,60]."
            )
    return ConfigError("The command line's overrides cannot be parsed; write them as key=value.")


def composition_error(exc: Exception, overrides: list[str]) -> ConfigError:
    """One paragraph for a failed composition, from the exception's fields."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in str(exc.missing_cfg_file):
        group, name = str(exc.missing_cfg_file).rsplit("/", 1)
        options = sorted(set(exc.options or []) | set(group_options(group)))
        given = find_override(overrides, group) or f"{group}={name}"
        refused = registry.rejection(group, name) if group in registry.KINDS else None
        why = f", because that {group} was not registered: {refused}" if refused else "."
        return ConfigError(
            f"{given}: the config group {group!r} has no option {name!r}{why} The options are: "
            f"{', '.join(options) or '(none)'} (parts whose Config dataclass holds their defaults, and YAML files "
            f"of configs/{group}/ or of an installed plugin's config folder; `scorelift --list` shows them)."
        )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = exc.__cause__ or exc
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if full_key and parent is not None and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        parent_key = str(full_key).rsplit(".", 1)[0] if "." in str(full_key) else ""
        keys = ", ".join(str(k) for k in parent.keys() if parent_key or k != "hydra")
        given = find_override(overrides, str(full_key))
        shown = f" (in the override {given!r})" if given else ""
        where = f"the {parent_key!r} section" if parent_key else "the root config"
        return ConfigError(
            f"Unknown config key {str(full_key)!r}{shown}. The keys of {where} are: {keys}. Check the "
            f"spelling; `scorelift --cfg job` prints the whole config."
        )
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return ConfigError(f"The command line does not compose into a config: {first_line}")


def load_local_plugins(overrides: list[str]) -> None:
    """Import the files of ``plugins.paths=[...]`` before composing, so the parts they register
    are options of their config groups in the same command (``guidance=<their name>``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    given = find_override(overrides, "plugins.paths")
    if given is None:
        return
    try:
        value = OverridesParser.create().parse_overrides([given])[0].value()
    except OverrideParseException:
        raise parse_error([given]) from None
    paths = value if isinstance(value, list) else [value]
    for path in paths:
        registry.load_plugin_file(str(path))


def search_path_override(overrides: list[str]) -> list[str]:
    """``hydra.searchpath=[...]`` naming the installed packages' config modules and the plugins'
    config folders (none where the command line sets the search path itself)."""
    if find_override(overrides, "hydra.searchpath"):
        return []
    searchpath = [f"pkg://{m}" for m in extra_config_modules()] + [f"file://{r}" for r in plugin_config_roots()]
    return ["hydra.searchpath=[" + ",".join(searchpath) + "]"]


def compose_config(overrides: list[str], with_hydra: bool = True) -> DictConfig:
    """The run config ``overrides`` compose into (with the ``hydra`` node unless told otherwise).

    Raises ConfigError (one paragraph) for an unknown group, option or key and for bad syntax.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from . import resolvers  # noqa: F401  (${slug:...}, ${step_fraction:...}, ${scorelift_data:...})

    load_local_plugins(overrides)
    check_override_targets(overrides)
    extra = search_path_override(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None, job_name="scorelift"):
            cfg = compose(config_name="config", overrides=[*overrides, *extra], return_hydra_config=with_hydra)
    except OverrideParseException:
        raise parse_error(overrides) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise composition_error(exc, overrides) from None
    check_root_keys(cfg)
    return cfg


def check_root_keys(cfg: DictConfig) -> None:
    """``+foo=1`` adds a root key Hydra cannot object to; nothing would read it, so it is a mistake."""
    keys, groups = root_layout()
    unknown = [k for k in cfg.keys() if k not in {*keys, *groups, "hydra"}]
    if unknown:
        shown = ", ".join(k for k in [*keys, *groups] if k != "preset")
        raise ConfigError(
            f"Unknown config key(s) {', '.join(repr(str(k)) for k in unknown)} at the top of the config. "
            f"The keys there are: {shown}. Check the spelling; `scorelift --cfg job` prints the whole config."
        )


def compose_saved(config_file: Path, overrides: list[str]) -> DictConfig:
    """A resumed run's config from its saved, resolved ``config.yaml`` alone (its ``.hydra/`` is
    gone), with the command line's ``key=value`` overrides on top and ``hydra.run.dir`` at its
    folder. Group choices (``guidance=sds``) cannot be re-composed without the saved overrides,
    so they are refused; an unknown key is refused as in a composed config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        job = OmegaConf.load(config_file)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{str(config_file)!r} cannot be read as a run config ({exc}); resume another run.") from None
    _, groups = root_layout()
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        raise parse_error(overrides) from None
    OmegaConf.set_struct(job, True)
    run_dir = config_file.parent
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra.") or key == "hydra":
            continue
        if key in groups and "." not in key:
            raise ConfigError(
                f"{override.input_line}: {run_dir} has no .hydra/ any more, so it resumes from its config.yaml alone, "
                f"where the config groups are already resolved; set the keys themselves (e.g. {key}.type=...) instead."
            )
        try:
            if override.is_delete():
                with open_dict(job):
                    OmegaConf.update(job, key, None, force_add=True)
            else:
                with open_dict(job) if override.is_add() else contextlib.nullcontext():
                    OmegaConf.update(job, key, override.value(), merge=True)
        except OmegaConfBaseException:
            raise ConfigError(
                f"{override.input_line}: {key!r} is not a key of the run config in {str(config_file)!r}; "
                f"`scorelift --cfg job` lists the keys."
            ) from None
    OmegaConf.set_struct(job, False)
    hydra_node = compose_config([], with_hydra=True).hydra
    cfg = OmegaConf.merge(job, {"hydra": OmegaConf.to_container(hydra_node, resolve=False)})
    cfg.hydra.run.dir = run_dir.as_posix()
    return cfg
