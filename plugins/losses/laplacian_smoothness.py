"""Laplacian smoothness of a mesh: each vertex should sit at the mean of its neighbours.

    loss = mean over vertices of || v_i - (1 / |N(i)|) sum_{j in N(i)} v_j ||^2

(the uniform Laplacian, in squared world units), which pulls spikes and dents flat. Stronger
than normal consistency on noise, it also shrinks a surface, so its weight stays small."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.renderer import RenderOutput
from scorelift.maths.meshes import edges_of
from scorelift.registry import register


@dataclass(kw_only=True)
class LaplacianSmoothnessConfig:
    """The ``laplacian-smoothness`` loss has no options; it reads the rendered mesh (a rasteriser's)."""


@register("loss", "laplacian-smoothness")
class LaplacianSmoothnessLoss(Loss):
    """render.extras["mesh"] {"vertices" [M, 3], "faces" [K, 3]} -> scalar (squared world units)."""

    # one line for `scorelift --list`
    summary = "Mesh smoothness: each vertex's distance from the mean of its neighbours."

    Config = LaplacianSmoothnessConfig
    reads = ("mesh",)

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        vertices, faces = render.extras["mesh"]["vertices"], render.extras["mesh"]["faces"]
        if faces.shape[0] == 0:
            return vertices.sum() * 0.0
        edges, _ = edges_of(faces)
        a, b = edges[:, 0], edges[:, 1]
        total = torch.zeros_like(vertices).index_add(0, a, vertices[b]).index_add(0, b, vertices[a])
        degree = torch.zeros(vertices.shape[0], dtype=vertices.dtype, device=vertices.device)
        degree = degree.index_add(0, a, torch.ones_like(a, dtype=vertices.dtype))
        degree = degree.index_add(0, b, torch.ones_like(b, dtype=vertices.dtype))
        used = degree > 0
        lap = vertices[used] - total[used] / degree[used, None]
        return lap.square().sum(dim=-1).mean()
