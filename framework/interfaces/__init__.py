"""The abstract parts every plugin implements; tensor shapes are in each docstring."""

from scorelift.interfaces.background import Background
from scorelift.interfaces.evaluator import Evaluator
from scorelift.interfaces.base import BasePart, BaseModulePart
from scorelift.interfaces.geometry import Geometry, GeometryOutput
from scorelift.interfaces.guidance import Guidance, GuidanceOutput
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.prior import Conditioning, DiffusionPrior, TextConditioning
from scorelift.interfaces.renderer import RenderOutput, Renderer

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
