"""The abstract parts every plugin implements; tensor shapes are in each docstring."""

from .background import Background
from .evaluator import Evaluator
from .base import BasePart, BaseModulePart
from .geometry import Geometry, GeometryOutput
from .guidance import Guidance, GuidanceOutput
from .loss import Loss
from .prior import Conditioning, DiffusionPrior, TextConditioning
from .renderer import RenderOutput, Renderer

__all__ = [
    "Background",
    "BaseModulePart",
    "BasePart",
    "DiffusionPrior",
    "Evaluator",
    "Geometry",
    "GeometryOutput",
    "Guidance",
    "GuidanceOutput",
    "Loss",
    "RenderOutput",
    "Renderer",
    "Conditioning",
    "TextConditioning",
]
