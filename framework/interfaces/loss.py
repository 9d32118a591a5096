"""Loss: a scalar regulariser of the render (emptiness, sparsity, orientation, ...)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..data.cameras import CameraBatch
from .base import BasePart
from .renderer import RenderOutput


class Loss(BasePart):
    """Weighted by the system's ``lambda_<name>`` (a scheduled scalar) and summed into the total.

    ``reads`` names what the loss reads of the render beyond colour, opacity and depth (the names
    of ``interfaces.renderer.OPTIONAL_OUTPUTS``, e.g. ``("weights",)``): the start-up check refuses
    a loss whose renderer does not declare them."""

    reads: ClassVar[tuple[str, ...]] = ()

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        """-> scalar tensor (unweighted)."""
        raise NotImplementedError
