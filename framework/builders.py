"""Building parts from config: a part's defaults live in exactly one place.

Either its ``Config`` dataclass gives every option a default (every built-in part does; such a
part is also a Hydra structured config, see ``registry.store_structured_config``), or a YAML file
``configs/<kind>/<name>.yaml`` (or the plugin's own ``config_file``) holds ``type: <name>`` and
every option, and the dataclass declares the fields without defaults, so a value missing from
the YAML is an error rather than a silently different default (docs/plugins.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from . import registry
from .errors import ConfigError

def config_file(kind: str, name: str) -> Path:
    """Where the default config of plugin ``name`` of ``kind`` lives: the plugin's own
    ``config_file``, else ``<kind>/<name>.yaml`` in scorelift's config folders."""
    from .compose import config_root

    cls = registry.find(kind, name)
    own = getattr(cls, "config_file", None)
    if own is not None:
        return Path(own)
    return config_root() / kind / f"{name}.yaml"


def default_config(kind: str, name: str) -> dict:
    """The plugin's defaults from its YAML file, without the ``type`` key; {} for a plugin whose
    ``Config`` dataclass holds every default itself (parsing the config fills them in)."""
    path = config_file(kind, name)
    if not path.is_file() and registry.has_full_defaults(getattr(registry.find(kind, name), "Config", None)):
        return {}
    if not path.is_file():
        raise ConfigError(
            f"{kind} plugin {name!r} has no default config file at {path}; every plugin needs one "
            f"(with `type: {name}` and all its options)."
        )
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("type", None)
    data.pop("defaults", None)
    return data


def plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def merged_config(kind: str, name: str, overrides: Any = None) -> dict:
    """Defaults of ``name`` with ``overrides`` (dict or DictConfig, may hold ``type``) on top."""
    over = plain(overrides)
    over.pop("type", None)
    return OmegaConf.to_container(OmegaConf.merge(default_config(kind, name), over), resolve=True)


def build(kind: str, cfg: Any, *args, **kwargs):
    """Instantiate the plugin named by ``cfg['type']`` with its merged config.

    ``args`` / ``kwargs`` are passed after the config (e.g. the prior for a guidance).
    """
    node = plain(cfg)
    name = node.get("type")
    if not name:
        choices = ", ".join(registry.available(kind)[kind]) or "(none)"
        raise ConfigError(f"The {kind} config has no `type`; set it to one of: {choices}.")
    cls = registry.find(kind, name)
    return cls(merged_config(kind, name, node), *args, **kwargs)


def build_named(kind: str, name: str, overrides: Any = None, *args, **kwargs):
    """Instantiate plugin ``name`` of ``kind`` from its defaults plus ``overrides`` (tests, scripts)."""
    return build(kind, {**plain(overrides), "type": name}, *args, **kwargs)
