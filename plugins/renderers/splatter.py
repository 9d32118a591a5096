"""Splatter: draws a Gaussian geometry's splats, with a pure-PyTorch reference on every device and
gsplat's CUDA rasteriser where it can be used.

``backend``: ``auto`` (gsplat on a CUDA device when it imports and its kernels build, else the
pure splatter, with one warning line saying why), ``torch`` (always the pure splatter, the
reference: ``scorelift.maths.splat``), or ``gsplat`` (refused at start-up where it cannot be used).

Output (``RenderOutput``): color [B, H, W, C] over the background, opacity [B, H, W, 1],
depth [B, H, W, 1] (sum of compositing weights times the distance to each Gaussian's centre),
and extras "means2d" [B, N, 2] (the centres in pixels, their gradient retained in training: the
geometry's density control reads it) and "radii" [B, N] (pixels, 0 where a Gaussian was not
drawn). No per-sample weights: losses that read them do not apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.errors import ConfigError
from scorelift.interfaces.background import Background
from scorelift.interfaces.geometry import Geometry
from scorelift.interfaces.renderer import RenderOutput, Renderer
from scorelift.maths.splat import covariance_3d, project_gaussians, sh_colour, splat
from scorelift.registry import register

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "gsplat")


@dataclass(kw_only=True)
class SplatterConfig:
    """Options of ``splatter`` and their defaults (``renderer=splatter renderer.<option>=...``)."""

    backend: str = "auto"  # auto | torch | gsplat
    # Pixels per tile side (pure splatter): where work is grouped, not the result. 4 was the fastest
    # of 2, 4, 8 and 16 for 4,000 Gaussians at 64 x 64 on the CPU (smaller tiles waste fewer pixels
    # on each Gaussian's square bound, larger ones sort fewer pairs).
    tile: int = 4
    max_pairs: int = 1 << 22  # (Gaussian, pixel) entries composited at once (pure splatter): bounds memory


@register("renderer", "splatter")
class Splatter(Renderer):
    """Alpha-composited 3D Gaussians (``kind = "gaussians"``)."""

    # one line for `scorelift --list`
    summary = "Depth-sorted alpha compositing of 3D Gaussians (pure PyTorch; gsplat on CUDA if it builds)."

    Config = SplatterConfig
    renders = ("gaussians",)
    outputs = ("means2d", "radii")

    @classmethod
    def check_config(cls, c: SplatterConfig) -> None:
        where = "renderer (splatter)"
        if c.backend not in BACKENDS:
            raise ConfigError(f"{where} backend={c.backend!r} is not one of {', '.join(BACKENDS)} (auto: gsplat on CUDA "
                              f"where it builds, else the pure-PyTorch splatter).")
        if c.backend == "gsplat":
            from scorelift.library.gsplat_backend import gsplat_problems

            problems = gsplat_problems()
            if problems:
                raise ConfigError(f"{where} backend='gsplat' cannot run here: {'; and '.join(problems)}. Use "
                                  f"renderer.backend=auto (gsplat where it can run, else the pure splatter) or "
                                  f"renderer.backend=torch.")
        if c.tile < 1 or c.max_pairs < 1:
            raise ConfigError(f"renderer (splatter) tile={c.tile} and max_pairs={c.max_pairs} must be at least 1.")

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self._gsplat = None  # the gsplat backend, once chosen (None: not yet tried)

    def backend_for(self, device: torch.device) -> str:
        """The backend that draws on ``device``: "gsplat" or "torch" (see the module docstring)."""
        want = self.cfg.backend
        if want == "torch" or device.type != "cuda":
            return "torch"
        if self._gsplat is None:
            from scorelift.library.gsplat_backend import load_gsplat

            self._gsplat, why = load_gsplat(device)
            if self._gsplat is False and want == "gsplat":
                raise ConfigError(f"renderer (splatter) backend='gsplat' cannot run here: {why}. Use "
                                  f"renderer.backend=auto or renderer.backend=torch.")
            if self._gsplat is False:
                log.warning("Splatter: gsplat cannot be used (%s); drawing with the pure-PyTorch splatter.", why)
        return "gsplat" if self._gsplat else "torch"

    def forward(self, geometry: Geometry, background: Background, cameras: CameraBatch,
                generator: torch.Generator | None = None) -> RenderOutput:
        B, H, W = cameras.batch_size, cameras.height, cameras.width
        g = geometry.gaussians()
        origins, dirs = cameras.rays()
        bg = background(dirs)  # [B, H, W, C]
        dtype = g.means.dtype
        c2w = cameras.c2w.to(dtype)
        if g.sh_degree > 0:
            view = torch.nn.functional.normalize(g.means[None] - c2w[:, None, :3, 3], dim=-1)  # [B, N, 3]
            colour = sh_colour(g.sh, view, g.sh_degree)
        else:
            colour = sh_colour(g.sh, g.means[None, :, :], 0)
        if g.rgb:
            colour = (colour + 0.5).clamp(0.0, 1.0)
        if self.backend_for(g.means.device) == "gsplat":
            from scorelift.library.gsplat_backend import render_gsplat

            color, opacity, depth, means2d, radii = render_gsplat(self._gsplat, g, colour, c2w, cameras.fovy, H, W, bg)
        else:
            projected = project_gaussians(g.means, covariance_3d(g.scales, g.quats), c2w, cameras.fovy, H, W)
            means2d, radii = projected.xy, projected.radius
            if means2d.requires_grad:
                means2d.retain_grad()  # the density control reads d loss / d centre (after_backward)
            out = splat(projected, g.opacities, colour, bg.to(dtype), self.cfg.tile, self.cfg.max_pairs)
            color, opacity, depth = out.color, out.opacity, out.depth
        return RenderOutput(color=color, opacity=opacity, depth=depth, extras={"means2d": means2d, "radii": radii})
