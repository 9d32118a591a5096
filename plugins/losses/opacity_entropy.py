"""Binary entropy of the opacity: pushes every pixel towards fully empty or fully opaque."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.errors import ConfigError
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.renderer import RenderOutput
from scorelift.registry import register


@dataclass(kw_only=True)
class OpacityEntropyConfig:
    """Options of the ``opacity-entropy`` loss and their defaults (set under
    ``system.losses.opacity-entropy``)."""

    eps: float = 1e-5  # opacity is clamped to [eps, 1 - eps] so the log stays finite


@register("loss", "opacity-entropy")
class OpacityEntropyLoss(Loss):
    """render.opacity [B, H, W, 1] -> scalar mean(-o log o - (1 - o) log(1 - o))."""

    # one line for `scorelift --list`
    summary = "Pushes each pixel's opacity to 0 or 1 (binary entropy)."

    Config = OpacityEntropyConfig

    @classmethod
    def check_config(cls, c: OpacityEntropyConfig) -> None:
        if not 0.0 < c.eps < 0.5:
            raise ConfigError(f"loss (opacity-entropy) eps={c.eps} must lie in (0, 0.5) (1e-5).")

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        o = render.opacity.clamp(self.cfg.eps, 1.0 - self.cfg.eps)
        return (-o * torch.log(o) - (1.0 - o) * torch.log1p(-o)).mean()
