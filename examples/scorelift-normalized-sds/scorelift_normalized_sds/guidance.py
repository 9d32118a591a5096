"""``normalized-sds``: SDS whose per-sample gradient is rescaled to a fixed RMS.

SDS's gradient size swings with t and with the guidance scale; dividing each sample's
w(t) (e_cfg - eps) by its RMS and multiplying by ``target_rms`` keeps the step size steady, so
one learning rate suits every scale. A small, complete example of a third-party guidance: it
reuses scorelift's SDS for sampling, the UNet call and the gradient injection, and changes only
``direction``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from framework.errors import ConfigError
from framework.registry import register
from plugins.guidance.sds import SDSConfig, SDSGuidance


@dataclass
class NormalizedSDSConfig(SDSConfig):
    target_rms: float  # RMS of each sample's direction after rescaling


@register("guidance", "normalized-sds")
class NormalizedSDSGuidance(SDSGuidance):
    Config = NormalizedSDSConfig
    # the defaults ship inside this package; scorelift's launcher adds <package>/configs to Hydra's
    # search path, so `guidance=normalized-sds` composes this file
    config_file = Path(__file__).resolve().parent / "configs" / "guidance" / "normalized-sds.yaml"

    def __init__(self, cfg, prior):
        super().__init__(cfg, prior)
        if not self.cfg.target_rms > 0:
            raise ConfigError(f"guidance.target_rms={self.cfg.target_rms} must be positive (default 1.0).")

    def direction(self, e_c: torch.Tensor, e_u: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """e_cfg - eps, each sample [C, h, w] rescaled to RMS ``target_rms``."""
        d = super().direction(e_c, e_u, eps, t)
        rms = d.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, *([1] * (d.ndim - 1)))
        return d * (self.cfg.target_rms / rms)
