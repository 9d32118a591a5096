"""A fixed background colour (or latent), no parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scorelift.errors import ConfigError
from scorelift.interfaces.background import Background
from scorelift.registry import register


@dataclass(kw_only=True)
class SolidBackgroundConfig:
    """Options of ``solid`` and their defaults (``background=solid background.<option>=...``):
    a fixed background value, no parameters."""

    n_features: int = 3  # C, must equal the geometry's
    # C values, used as they are (one per feature channel); the default is white RGB.
    color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])


@register("background", "solid")
class SolidBackground(Background):
    """forward(rays_d [B, H, W, 3]) -> [B, H, W, C] filled with ``color`` (buffer, not learned)."""

    # one line for `scorelift --list`
    summary = "A fixed colour (the shapes world's white)."

    Config = SolidBackgroundConfig

    @classmethod
    def check_config(cls, c: SolidBackgroundConfig) -> None:
        if len(c.color) != c.n_features:
            raise ConfigError(
                f"background (solid) color={list(c.color)} has {len(c.color)} values but n_features={c.n_features}; "
                f"give one value per feature channel (e.g. [1, 1, 1] for white RGB)."
            )

    def __init__(self, cfg=None):
        super().__init__(cfg)
        c = self.cfg
        self.n_features = c.n_features
        self.register_buffer("color", torch.tensor(list(c.color), dtype=torch.float32), persistent=False)

    def forward(self, rays_d: torch.Tensor) -> torch.Tensor:
        return self.color.to(rays_d).expand(*rays_d.shape[:-1], self.n_features)
