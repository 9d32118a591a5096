"""Typed plugin configs: a dataclass per part, unknown keys and wrong types rejected clearly."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError
from . import resolvers  # noqa: F401,E402  (configs use ${step_fraction:...}; parsed configs resolve here)

C = TypeVar("C")


def parse_config(cls: type[C], cfg: Any, where: str) -> C:
    """Build dataclass ``cls`` from ``cfg`` (dict, DictConfig or None).

    ``where`` names the config node for error messages, e.g. ``"guidance (sds)"``.
    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key and
    listing the valid ones.
    """
    if cfg is None:
        cfg = {}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise ConfigError(f"The config of {where} must be a mapping of keys to values, got {cfg!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in cfg if k not in fields]
    if unknown:
        raise ConfigError(
            f"Unknown config key(s) {', '.join(repr(k) for k in unknown)} for {where}. "
            f"Valid keys are: {', '.join(sorted(fields))}. Check the spelling, or that the key belongs "
            f"to this part and not another one."
        )
    try:
        base = OmegaConf.structured(cls)
        for key, value in cfg.items():
            # A mapping given for a dict option (a prior's view_templates) is its whole value; a merge
            # would keep the default's other keys, so {} could never clear the default.
            if isinstance(value, dict) and OmegaConf.get_type(base, key) is dict:
                base[key] = {}
        merged = OmegaConf.merge(base, cfg)
    except ValidationError as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        field = fields.get(str(key).split(".")[0])
        expected = getattr(field, "type", "?") if field else "?"
        raise ConfigError(
            f"Wrong value for {where} key {key!r}: {str(exc).splitlines()[0]}. "
            f"Expected a value of type {expected}."
        ) from None
    except (ConfigKeyError, OmegaConfBaseException) as exc:
        raise ConfigError(f"Invalid config for {where}: {exc}") from None
    missing = [k for k in fields if OmegaConf.is_missing(merged, k)]
    if missing:
        raise ConfigError(
            f"Missing config key(s) {', '.join(repr(k) for k in missing)} for {where}. Every option "
            f"of a plugin needs a default in its Config dataclass (or a value in the plugin's own YAML file)."
        )
    return OmegaConf.to_object(merged)


def to_dict(cfg: Any) -> dict:
    """A plain dict of a dataclass or DictConfig (for saving and logging)."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)
