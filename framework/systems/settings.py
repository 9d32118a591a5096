"""The score-distillation system's options and their start-up check: the part of the system that
needs no Lightning, so that composing and checking a run (and ``scorelift --list``) answer
without importing it (about two seconds on a 2-core machine). The system itself,
``scorelift.systems.score_distillation``, is imported when a run is built (``scorelift.registry``:
a deferred registration).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..schedule import check_scheduled
from .optim import OptimizerConfig, check_optimizer_config


@dataclass(kw_only=True)
class ViewsConfig:
    """Fixed views for validation images and the turntable (degrees; resolution in pixels of the
    render, i.e. latent pixels for latent geometry)."""

    elevation: float
    distance: float
    fovy: float
    resolution: int
    n_frames: int
    fps: int


@dataclass(kw_only=True)
class SystemConfig:
    """name: the preset's name (used in run paths); loss_weights: ``lambda_<term>`` -> scheduled
    scalar, one for ``guidance`` and one per entry of ``losses`` (options of each loss plugin)."""

    type: str
    name: str
    loss_weights: dict
    losses: dict
    optimizer: OptimizerConfig
    views: ViewsConfig
    validation_every: int
    n_validation_views: int
    max_nonfinite_steps: int


def loss_key(name: str) -> str:
    return "lambda_" + name.replace("-", "_")


def check_system_config(system: SystemConfig, device: torch.device) -> None:
    """Start-up check of the parsed ``system`` section (each loss's own config is checked as a
    part): one well-formed weight per term (``lambda_guidance`` and ``lambda_<loss>``) and the
    optimizer (name, args tried on the run's ``device``, learning rates in range)."""
    expected = {loss_key("guidance")} | {loss_key(n) for n in system.losses}
    extra = set(system.loss_weights) - expected
    missing = expected - set(system.loss_weights)
    if extra:
        raise ConfigError(
            f"system.loss_weights has {sorted(extra)} but no such loss is configured; configured terms: "
            f"{sorted(expected)}. Add the loss under system.losses or remove the weight."
        )
    if missing:
        raise ConfigError(f"system.loss_weights lacks {sorted(missing)}; give every configured term a weight.")
    for key, value in system.loss_weights.items():
        check_scheduled(value, f"system.loss_weights.{key}")
    check_optimizer_config(system.optimizer, device)
