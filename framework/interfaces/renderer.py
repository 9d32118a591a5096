"""Renderer: turns a geometry and camera rays into images."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .background import Background
from .base import BaseModulePart
from .geometry import Geometry


@dataclass
class RenderOutput:
    """Per-pixel outputs of one batch of B images of H x W pixels.

    color: [B, H, W, C] composited over the background (C = geometry.n_features);
    opacity: [B, H, W, 1] accumulated alpha in [0, 1];
    depth: [B, H, W, 1] expected ray distance of the visible surface (0 where empty);
    weights: [B, H, W, S] per-sample volume-rendering weights (S samples per ray);
    extras: anything else a loss may use (e.g. "normals" [B, H, W, S, 3], "ray_dirs" [B, H, W, 3]).
    """

    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor
    extras: dict = field(default_factory=dict)


class Renderer(BaseModulePart):
    """Volume-renders ``geometry`` along rays and composites it over ``background``."""

    # True: draws on ``generator.device`` (given a generator on the run's device on the GPU fast
    # path); False: always given a CPU generator. See Guidance.draws_on_device.
    draws_on_device: bool = False

    def forward(
        self,
        geometry: Geometry,
        background: Background,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """rays_o, rays_d: [B, H, W, 3] (unit directions). ``generator`` (CPU, or the run's device
        with ``draws_on_device``) drives stratified jitter in training mode; None (or eval mode)
        samples deterministically."""
        raise NotImplementedError
