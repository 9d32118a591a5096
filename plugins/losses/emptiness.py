"""SJC's emptiness loss: mean(log(1 + scale * w)) over the per-sample rendering weights.

The log makes the penalty nearly linear for small weights and flat for large ones, so it
clears thin fog without punishing the opaque surface much. From ``boost_at * max_steps`` on,
the value is multiplied by ``boost_factor`` (SJC: x20 after half the steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.errors import ConfigError
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.renderer import RenderOutput
from scorelift.registry import register


@dataclass(kw_only=True)
class EmptinessConfig:
    """Options of the ``emptiness`` loss and their defaults (set under ``system.losses.emptiness``),
    SJC's. The authors weight it with lambda_emptiness 1e4."""

    scale: float = 10.0  # the loss is mean(log(1 + scale * w)) (SJC: 10)
    boost_factor: float = 20.0  # multiply the loss by this ... (SJC: 20)
    boost_at: float = 0.5  # ... from this fraction of max_steps on (SJC: 0.5)


@register("loss", "emptiness")
class EmptinessLoss(Loss):
    """render.weights [B, H, W, S] -> scalar mean(log(1 + scale * w)) * (boost if boosted)."""

    # one line for `scorelift --list`
    summary = "SJC's emptiness loss: clears thin fog along the rays (log(1 + scale * weight))."

    Config = EmptinessConfig
    reads = ("weights",)

    @classmethod
    def check_config(cls, c: EmptinessConfig) -> None:
        if c.scale <= 0:
            raise ConfigError(f"loss (emptiness) scale={c.scale} must be positive (SJC: 10).")
        if not 0.0 <= c.boost_at <= 1.0:
            raise ConfigError(
                f"loss (emptiness) boost_at={c.boost_at} is a fraction of the training steps and must "
                f"lie in [0, 1] (SJC: 0.5)."
            )

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.multiplier = 1.0

    def update_step(self, step: int, max_steps: int) -> None:
        self.multiplier = self.cfg.boost_factor if step >= self.cfg.boost_at * max_steps else 1.0

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        return torch.log1p(self.cfg.scale * render.weights).mean() * self.multiplier
