"""scorelift: text-to-3D by score distillation.

The stable public API that plugins import (everything else may move between versions)::

    from scorelift import register, Guidance, SDSGuidance, SDSConfig, ConfigError

- registration: ``register`` (class decorator), ``find`` (a registered class by kind and name);
- interfaces: ``Geometry``, ``Renderer``, ``Background``, ``Guidance``, ``Loss``,
  ``DiffusionPrior``, ``Evaluator`` and the data they exchange (``GeometryOutput``, ``RenderOutput``,
  ``Conditioning`` (alias ``TextConditioning``), ``CameraBatch``, ``GuidanceOutput``);
- building blocks: ``SDSGuidance`` / ``SDSConfig`` (subclass and override ``direction``),
  ``score_math`` (CFG, gradient injection, noise-level maps, seeded sampling), ``scheduled``;
- errors: ``ScoreliftError``, ``ConfigError``, ``PluginError``, ``PriorLoadError``.

Names are resolved on first use, so ``import scorelift`` stays cheap (no torch or diffusers
import until a name that needs them is touched).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> module that defines it
_PUBLIC = {
    "register": "scorelift.registry",
    "find": "scorelift.registry",
    "Geometry": "scorelift.interfaces",
    "GeometryOutput": "scorelift.interfaces",
    "Renderer": "scorelift.interfaces",
    "RenderOutput": "scorelift.interfaces",
    "Background": "scorelift.interfaces",
    "Guidance": "scorelift.interfaces",
    "GuidanceOutput": "scorelift.interfaces",
    "Loss": "scorelift.interfaces",
    "DiffusionPrior": "scorelift.interfaces",
    "Evaluator": "scorelift.interfaces",
    "Conditioning": "scorelift.interfaces",
    "TextConditioning": "scorelift.interfaces",
    "CameraBatch": "scorelift.data.cameras",
    "SDSGuidance": "scorelift.library.sds",
    "SDSConfig": "scorelift.library.sds",
    "scheduled": "scorelift.schedule",
    "ScoreliftError": "scorelift.errors",
    "ConfigError": "scorelift.errors",
    "PluginError": "scorelift.errors",
    "PriorLoadError": "scorelift.errors",
}
_MODULES = {"score_math": "scorelift.maths.score_math"}

__all__ = sorted([*_PUBLIC, *_MODULES, "__version__"])


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'scorelift' has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return __all__
