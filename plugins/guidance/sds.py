"""``sds``: Score Distillation Sampling (DreamFusion), per docs/methods.md.

The method lives in the core library (``scorelift.library.sds``), since plugins subclass it
(``from scorelift import SDSGuidance``); this module registers it as the guidance ``sds``.
"""

from scorelift.library.sds import SDSConfig, SDSGuidance
from scorelift.registry import register

__all__ = ["SDSConfig", "SDSGuidance"]

register("guidance", "sds")(SDSGuidance)
