"""SJC's centre-depth loss: the central crop's mean depth should lie in front of the border's.

    loss = -log(border_mean - center_mean)     (per image, averaged over the batch)

The SJC authors wrote ``-log(center - border)``: with the object in the middle that argument
is negative, so the value is NaN while the gradient still points the right way. Here the
argument is ``border - center``, positive when the object is where it should be.

Empty pixels have depth 0 in a render (``depth`` is the unnormalised sum of w * t), which would
make empty borders look *near*. Depth is therefore completed with the background at ``far``:
``depth + (1 - opacity) * far`` (the authors' renderer did the same with a far value of 10).

Guard: when the gap is below ``eps`` (the object is not yet in front, or the render is empty)
the log is continued linearly, ``-log(eps) - (gap - eps) / eps``. A plain clamp would avoid the
NaN too, but would zero the gradient exactly when the loss is most needed; the linear
continuation is finite, C1 at ``eps``, and keeps pushing the centre forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.errors import ConfigError
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.renderer import RenderOutput
from scorelift.registry import register


@dataclass(kw_only=True)
class CenterDepthConfig:
    """Options of the ``center-depth`` loss and their defaults (set under
    ``system.losses.center-depth``). Its weight, ``lambda_center_depth``, is 0 by default in the
    SJC authors' code and 10 to 100 for some prompts."""

    # Side of the central crop / image side: 50 / 64, the central 50x50 crop of a 64x64 render (SJC).
    crop_fraction: float = 0.78125
    far: float = 10.0  # depth given to empty pixels (the authors' renderer blends depth with 10)
    eps: float = 1e-3  # below this gap the log is continued linearly (finite, keeps the gradient)


def safe_neg_log(x: torch.Tensor, eps: float) -> torch.Tensor:
    """-log(x) for x >= eps, its tangent line at eps below (finite, gradient -1/eps)."""
    linear = -math.log(eps) - (x - eps) / eps
    return torch.where(x >= eps, -torch.log(x.clamp_min(eps)), linear)


def crop_bounds(size: int, fraction: float) -> tuple[int, int]:
    """[start, stop) of the centred crop of ``round(size * fraction)`` pixels (64 -> 7, 57)."""
    c = max(1, min(size - 1, round(size * fraction)))
    start = (size - c) // 2
    return start, start + c


@register("loss", "center-depth")
class CenterDepthLoss(Loss):
    """render.depth, render.opacity [B, H, W, 1] -> scalar."""

    # one line for `scorelift --list`
    summary = "SJC's centre-depth loss: the image centre's depth in front of the border's."

    Config = CenterDepthConfig

    @classmethod
    def check_config(cls, c: CenterDepthConfig) -> None:
        if not 0.0 < c.crop_fraction < 1.0:
            raise ConfigError(
                f"loss (center-depth) crop_fraction={c.crop_fraction} must lie strictly between 0 and 1 "
                f"(SJC: 50/64 = 0.78125) so that both a centre and a border exist."
            )
        if c.far <= 0 or c.eps <= 0:
            raise ConfigError(f"loss (center-depth) far={c.far} and eps={c.eps} must be positive.")

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        depth = (render.depth + (1.0 - render.opacity) * self.cfg.far)[..., 0]  # [B, H, W]
        B, H, W = depth.shape
        r0, r1 = crop_bounds(H, self.cfg.crop_fraction)
        c0, c1 = crop_bounds(W, self.cfg.crop_fraction)
        center = depth[:, r0:r1, c0:c1]
        center_sum = center.sum(dim=(1, 2))
        n_center = center[0].numel()
        border_mean = (depth.sum(dim=(1, 2)) - center_sum) / (H * W - n_center)
        gap = border_mean - center_sum / n_center  # [B]
        return safe_neg_log(gap, self.cfg.eps).mean()
