"""One learnable background colour shared by every ray: sigmoid of a learned logit."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scorelift.errors import ConfigError
from scorelift.interfaces.background import Background
from scorelift.registry import register


@dataclass(kw_only=True)
class LearnedColorBackgroundConfig:
    """Options of ``learned-color`` and their defaults (``background=learned-color
    background.<option>=...``): one learnable colour, sigmoid-activated."""

    n_features: int = 3  # C, must equal the geometry's
    init_color: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # C starting values in (0, 1)


@register("background", "learned-color")
class LearnedColorBackground(Background):
    """Parameter ``logit`` [C]; forward(rays_d [B, H, W, 3]) -> [B, H, W, C] = sigmoid(logit)."""

    # one line for `scorelift --list`
    summary = "One learned colour."

    Config = LearnedColorBackgroundConfig

    @classmethod
    def check_config(cls, c: LearnedColorBackgroundConfig) -> None:
        if len(c.init_color) != c.n_features:
            raise ConfigError(
                f"background (learned-color) init_color={list(c.init_color)} has {len(c.init_color)} values "
                f"but n_features={c.n_features}; give one value per channel."
            )
        if not all(0.0 < v < 1.0 for v in c.init_color):
            raise ConfigError(
                f"background (learned-color) init_color={list(c.init_color)} must lie strictly inside (0, 1): "
                f"the colour is a sigmoid, which never reaches 0 or 1."
            )

    def __init__(self, cfg=None):
        super().__init__(cfg)
        c = self.cfg
        self.n_features = c.n_features
        self.logit = torch.nn.Parameter(torch.logit(torch.tensor(list(c.init_color), dtype=torch.float32)))

    def forward(self, rays_d: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit).to(rays_d.dtype).expand(*rays_d.shape[:-1], self.n_features)
