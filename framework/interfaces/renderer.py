"""Renderer: turns a geometry seen by a batch of cameras into images.

A renderer receives the camera batch (intrinsics, camera-to-world, resolution): a ray marcher
makes its own rays from it (``CameraBatch.rays``), a rasteriser projects a mesh with it. It
declares the geometry kinds it draws (``renders``) and what its output carries beyond colour,
opacity and depth (``outputs_of``); the start-up check holds every geometry and loss of a run to
those declarations before anything is built.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..data.cameras import CameraBatch
from .background import Background
from .base import BaseModulePart
from .geometry import Geometry

# What every renderer's output holds: RenderOutput's three fields that are never None.
STANDARD_OUTPUTS = frozenset({"color", "opacity", "depth"})
# The optional outputs the built-in parts name (a plugin may declare others in ``extras``):
#   weights   [B, H, W, S] per-sample volume-rendering weights (RenderOutput.weights);
#   normals   [B, H, W, S, 3] per-sample unit normals, ray_dirs [B, H, W, 3] unit ray directions;
#   mesh      the rendered triangle mesh, a dict {"vertices": [V, 3], "faces": [F, 3] long}.
OPTIONAL_OUTPUTS = ("weights", "normals", "ray_dirs", "mesh")


@dataclass
class RenderOutput:
    """Per-pixel outputs of one batch of B images of H x W pixels.

    color: [B, H, W, C] composited over the background (C = geometry.n_features);
    opacity: [B, H, W, 1] accumulated alpha in [0, 1];
    depth: [B, H, W, 1] distance along the ray of the visible surface (0 where empty);
    weights: [B, H, W, S] per-sample volume-rendering weights (S samples per ray), or None for a
        renderer that does not declare ``weights`` (a rasteriser has no samples);
    extras: the other outputs the renderer declares (``OPTIONAL_OUTPUTS``, or a plugin's own).
    """

    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class Renderer(BaseModulePart):
    """Renders ``geometry`` for a camera batch and composites it over ``background``."""

    # The geometry kinds (``Geometry.kind``) this renderer draws.
    renders: ClassVar[tuple[str, ...]] = ("field",)
    # What RenderOutput carries beyond colour, opacity and depth, whatever the config
    # (``outputs_of`` may add what depends on it).
    outputs: ClassVar[tuple[str, ...]] = ()
    # True: draws on ``generator.device`` (given a generator on the run's device on the GPU fast
    # path); False: always given a CPU generator. See Guidance.draws_on_device.
    draws_on_device: bool = False
    # True for a renderer written to the plugin API before 0.2, whose forward takes rays
    # (rays_o, rays_d) instead of the camera batch: it still works, with a FutureWarning.
    takes_rays: ClassVar[bool] = False

    @classmethod
    def outputs_of(cls, cfg: Any) -> frozenset[str]:
        """Everything a renderer built from the parsed config ``cfg`` returns (the standard three
        and the optional outputs), told before it is built; default: ``outputs``."""
        return STANDARD_OUTPUTS | frozenset(cls.outputs)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is not None and "rays_o" in inspect.signature(forward).parameters:
            cls.takes_rays = True
            if "weights" not in cls.outputs:  # the old contract: every renderer returned weights
                cls.outputs = (*cls.outputs, "weights")
            warnings.warn(
                f"Renderer {cls.__module__}.{cls.__qualname__} defines forward(geometry, background, rays_o, rays_d, "
                f"generator), the renderer API before scorelift 0.2; renderers now receive the camera batch: "
                f"forward(geometry, background, cameras, generator), with rays from cameras.rays(). The old form works "
                f"until 0.3 (docs/plugins.md, section 6).",
                FutureWarning, stacklevel=2)

    def forward(
        self,
        geometry: Geometry,
        background: Background,
        cameras: CameraBatch,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """``cameras``: B cameras and the image size (H x W) -> RenderOutput of [B, H, W, ...].
        ``generator`` (CPU, or the run's device with ``draws_on_device``) drives any randomness
        in training mode (a ray marcher's stratified jitter); None (or eval mode) renders
        deterministically."""
        raise NotImplementedError

    def render(self, geometry: Geometry, background: Background, cameras: CameraBatch,
               generator: torch.Generator | None = None) -> RenderOutput:
        """What callers use: ``forward`` with the camera batch, or with its rays for a renderer of
        the earlier API (``takes_rays``)."""
        if self.takes_rays:
            rays_o, rays_d = cameras.rays()
            return self(geometry, background, rays_o, rays_d, generator)
        return self(geometry, background, cameras, generator)
