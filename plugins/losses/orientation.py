"""DreamFusion's orientation loss: penalise normals that face away from the camera.

    loss = mean over rays of sum_k stopgrad(w_k) * max(0, n_k . d)^2

with outward normals n_k and the ray direction d (from the camera into the scene): a surface
seen from the front has n . d < 0 and costs nothing; visible back-facing density is penalised.
The weights are detached, so the loss moves the normals (the density's shape), not opacity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.errors import ConfigError
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.renderer import RenderOutput
from scorelift.registry import register


@dataclass(kw_only=True)
class OrientationConfig:
    """The ``orientation`` loss has no options; it needs ``renderer.return_normals=true``."""


@register("loss", "orientation")
class OrientationLoss(Loss):
    """render.weights [B, H, W, S], extras "normals" [B, H, W, S, 3], "ray_dirs" [B, H, W, 3] -> scalar."""

    # one line for `scorelift --list`
    summary = "DreamFusion's orientation loss: no visible normals facing away from the camera."

    Config = OrientationConfig
    reads = ("weights", "normals", "ray_dirs")

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        normals = render.extras.get("normals")
        dirs = render.extras.get("ray_dirs")
        if normals is None or dirs is None:
            raise ConfigError(
                "The orientation loss needs per-sample normals, but the render has none: set "
                "renderer.return_normals=true (with a geometry that provides normals), or set its "
                "weight lambda_orientation to 0."
            )
        facing = (normals * dirs[..., None, :]).sum(dim=-1).clamp_min(0.0)  # [B, H, W, S]
        return (render.weights.detach() * facing.square()).sum(dim=-1).mean()
