"""Opacity sparsity (DreamFusion style): mean(sqrt(opacity^2 + eps)), a smooth L1 on opacity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.errors import ConfigError
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.renderer import RenderOutput
from scorelift.registry import register


@dataclass(kw_only=True)
class SparsityConfig:
    """Options of the ``sparsity`` loss and their defaults (set under ``system.losses.sparsity``)."""

    eps: float = 0.01  # smoothing of the L1 near 0


@register("loss", "sparsity")
class SparsityLoss(Loss):
    """render.opacity [B, H, W, 1] -> scalar mean(sqrt(o^2 + eps))."""

    # one line for `scorelift --list`
    summary = "Sparse renders: the mean opacity (DreamFusion's opacity penalty)."

    Config = SparsityConfig

    @classmethod
    def check_config(cls, c: SparsityConfig) -> None:
        if c.eps <= 0:
            raise ConfigError(f"loss (sparsity) eps={c.eps} must be positive (0.01).")

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        return torch.sqrt(render.opacity.square() + self.cfg.eps).mean()
