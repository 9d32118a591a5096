"""Rasteriser: draws a mesh geometry's triangles, in pure PyTorch (CPU and GPU alike).

For each camera of the batch the mesh (``geometry.mesh()``) is projected, the nearest triangle
at every pixel centre is found with a depth test, and the surface point under each covered pixel
(perspective-correct barycentrics of its triangle's vertices) is looked up in the geometry's
feature field. Silhouette and occlusion edges are antialiased analytically, which gives the
vertices gradients at the object's outline (``scorelift.maths.rasterize``).

Output (``RenderOutput``): color [B, H, W, C] over the background, opacity [B, H, W, 1] (1 where
covered, fractional at antialiased edges), depth [B, H, W, 1] (distance from the camera to the
surface point along its ray, 0 where empty), and extras "mesh" {"vertices": [M, 3], "faces":
[K, 3]} for the mesh regularisers. No per-sample weights: losses that read them do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.errors import ConfigError
from scorelift.interfaces.background import Background
from scorelift.interfaces.geometry import Geometry
from scorelift.interfaces.renderer import RenderOutput, Renderer
from scorelift.maths.rasterize import antialias, barycentrics, project, rasterize, silhouette_edges
from scorelift.registry import register


@dataclass(kw_only=True)
class RasterizerConfig:
    """Options of ``rasterizer`` and their defaults (``renderer=rasterizer renderer.<option>=...``)."""

    antialias: bool = True  # blend across silhouette edges (their gradient reaches the vertices)
    max_pairs: int = 1 << 22  # (triangle, pixel) candidates tested at once: bounds memory, not the result


@register("renderer", "rasterizer")
class Rasterizer(Renderer):
    """A pure-PyTorch triangle rasteriser for mesh geometry (``kind = "mesh"``)."""

    # one line for `scorelift --list`
    summary = "A differentiable triangle rasteriser with antialiased edges, for meshes (pure PyTorch)."

    Config = RasterizerConfig
    renders = ("mesh",)
    outputs = ("mesh",)

    @classmethod
    def check_config(cls, c: RasterizerConfig) -> None:
        if c.max_pairs < 1:
            raise ConfigError(f"renderer (rasterizer) max_pairs={c.max_pairs} must be at least 1.")

    def forward(self, geometry: Geometry, background: Background, cameras: CameraBatch,
                generator: torch.Generator | None = None) -> RenderOutput:
        B, H, W = cameras.batch_size, cameras.height, cameras.width
        vertices, faces = geometry.mesh()
        origins, dirs = cameras.rays()
        bg = background(dirs)  # [B, H, W, C]
        C = bg.shape[-1]
        dtype = vertices.dtype if vertices.is_floating_point() else bg.dtype
        xy, z = project(vertices, cameras.c2w, cameras.fovy, H, W)
        face_id = rasterize(xy.detach(), z.detach(), faces, H, W, self.cfg.max_pairs)
        (b, i, j), f, bary, _ = barycentrics(xy, z, faces, face_id)
        points = (bary[:, :, None] * vertices[faces[f]]).sum(dim=1)  # [n, 3] surface points
        features = geometry(points).features if points.shape[0] else bg.new_zeros((0, C))
        fg = torch.zeros((B, H, W, C), dtype=dtype, device=bg.device).index_put((b, i, j), features.to(dtype))
        opacity = torch.zeros((B, H, W, 1), dtype=dtype, device=bg.device)
        opacity = opacity.index_put((b, i, j), torch.ones((b.shape[0], 1), dtype=dtype, device=bg.device))
        distance = (points - origins[b, i, j]).norm(dim=-1)
        depth = torch.zeros((B, H, W, 1), dtype=dtype, device=bg.device).index_put((b, i, j), distance[:, None])
        color = fg + (1.0 - opacity) * bg
        if self.cfg.antialias and faces.shape[0]:
            edges = silhouette_edges(vertices, faces, cameras.c2w[:, :3, 3].to(vertices.dtype))
            color, opacity = antialias(color, opacity, depth[..., 0].detach(), face_id, xy, edges, self.cfg.max_pairs)
        return RenderOutput(color=color, opacity=opacity, depth=depth,
                            extras={"mesh": {"vertices": vertices, "faces": faces}})
