"""The abstract parts every plugin implements; tensor shapes are in each docstring."""

from framework.interfaces.background import Background
from framework.interfaces.base import BasePart, BaseModulePart
from framework.interfaces.geometry import Geometry, GeometryOutput
from framework.interfaces.guidance import Guidance, GuidanceOutput
from framework.interfaces.loss import Loss
from framework.interfaces.prior import DiffusionPrior, TextConditioning
from framework.interfaces.renderer import RenderOutput, Renderer

__all__ = [
    "Background",
    "BaseModulePart",
    "BasePart",
    "DiffusionPrior",
    "Geometry",
    "GeometryOutput",
    "Guidance",
    "GuidanceOutput",
    "Loss",
    "RenderOutput",
    "Renderer",
    "TextConditioning",
]
