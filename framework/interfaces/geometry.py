"""Geometry: a density field and a feature field over a bounding box."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framework.interfaces.base import BaseModulePart


@dataclass
class GeometryOutput:
    """density: [N] non-negative volume density; features: [N, C] colour (RGB in [0, 1]) or latent."""

    density: torch.Tensor
    features: torch.Tensor


class Geometry(BaseModulePart):
    """Maps world points to density and features.

    Subclasses set ``self.n_features`` (C) and register a buffer ``bbox`` [2, 3] (min corner,
    max corner) outside of which density is zero; ``feature_kind`` is "latent" or "rgb".
    """

    n_features: int
    feature_kind: str
    bbox: torch.Tensor

    def forward(self, points: torch.Tensor) -> GeometryOutput:
        """points: [N, 3] world coordinates -> GeometryOutput with N entries."""
        raise NotImplementedError

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """[N, 3] -> [N] density only (mesh export, occupancy); defaults to ``forward``."""
        return self.forward(points).density

    def normals(self, points: torch.Tensor) -> torch.Tensor | None:
        """[N, 3] -> [N, 3] unit normals (minus the density gradient), or None if not provided."""
        return None
