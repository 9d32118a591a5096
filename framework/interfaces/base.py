"""Base classes: every part has a dataclass ``Config`` parsed (strictly) from its config node.

A run builds its parts from its plan (``scorelift.plan``): each gets its Config already parsed and
checked at start-up, and takes it as it is. A part built by hand from a mapping (a test, a script)
has it parsed and checked here, once, the way start-up would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import parse_config
from ..schedule import Updateable


@dataclass(kw_only=True)
class EmptyConfig:
    pass


def parsed_config(cls: type, cfg: Any, where: str):
    """``cfg`` as it is when it is already ``cls.Config`` (a plan's: parsed and checked at start-up);
    else parsed against ``cls.Config`` and checked by ``cls.check_config``."""
    if isinstance(cfg, cls.Config):
        return cfg
    parsed = parse_config(cls.Config, cfg, where)
    cls.check_config(parsed)
    return parsed


class BasePart(Updateable):
    """A part that is not an nn.Module (guidance, losses, priors): kept out of the module tree so
    Lightning neither checkpoints nor wraps it; parts that do hold trainable state expose it
    through ``parameters()`` / ``state_dict()`` explicitly."""

    Config: ClassVar[type] = EmptyConfig
    name: ClassVar[str] = "?"

    def __init__(self, cfg: Any = None):
        self.cfg = parsed_config(type(self), cfg, self.describe())

    @classmethod
    def describe(cls) -> str:
        return f"{cls.__name__}"

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Check the values of a parsed ``Config`` that need nothing built (ConfigError naming the
        key and what is allowed). Run by the start-up check before anything is loaded or written."""


class BaseModulePart(torch.nn.Module, Updateable):
    """A part with trainable state (geometry, renderer, background): an nn.Module."""

    Config: ClassVar[type] = EmptyConfig

    def __init__(self, cfg: Any = None):
        torch.nn.Module.__init__(self)
        self.cfg = parsed_config(type(self), cfg, type(self).__name__)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """As ``BasePart.check_config``: value checks of a parsed ``Config``, run at start-up."""
