"""Optimizers with one parameter group per part, each with its own learning rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from scorelift.errors import ConfigError

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamax": torch.optim.Adamax,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


@dataclass
class OptimizerConfig:
    """name: one of OPTIMIZERS; args: extra keyword arguments (betas, eps, ...);
    lr: learning rate per part name (geometry, background, renderer, guidance)."""

    name: str
    args: dict
    lr: dict


def build_optimizer(cfg: OptimizerConfig, parts: dict[str, Iterable[torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """One group per part that has trainable parameters; every such part needs an lr entry."""
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(
            f"Unknown optimizer {cfg.name!r} in system.optimizer.name; choose one of {', '.join(OPTIMIZERS)}."
        )
    unknown = [k for k in cfg.lr if k not in parts]
    if unknown:
        raise ConfigError(
            f"system.optimizer.lr names unknown part(s) {unknown}; the parts are {', '.join(parts)}."
        )
    groups = []
    for part, params in parts.items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        if part not in cfg.lr:
            raise ConfigError(
                f"The {part} has trainable parameters but system.optimizer.lr has no `{part}` entry; "
                f"add e.g. `system.optimizer.lr.{part}=0.01` (set 0 to freeze it)."
            )
        groups.append({"params": params, "lr": float(cfg.lr[part]), "name": part})
    if not groups:
        raise ConfigError("Nothing to optimise: no part has trainable parameters.")
    return OPTIMIZERS[cfg.name](groups, **cfg.args)
