"""Loss: a scalar regulariser of the render (emptiness, sparsity, orientation, ...)."""

from __future__ import annotations

import torch

from ..data.cameras import CameraBatch
from .base import BasePart
from .renderer import RenderOutput


class Loss(BasePart):
    """Weighted by the system's ``lambda_<name>`` (a scheduled scalar) and summed into the total."""

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        """-> scalar tensor (unweighted)."""
        raise NotImplementedError
