"""Background: what a ray sees where the object is transparent."""

from __future__ import annotations

import torch

from .base import BaseModulePart


class Background(BaseModulePart):
    """Returns the background value of every ray; set ``n_features`` to match the geometry's."""

    n_features: int

    def forward(self, rays_d: torch.Tensor) -> torch.Tensor:
        """rays_d: [B, H, W, 3] unit directions -> [B, H, W, C] background colour or latent."""
        raise NotImplementedError
