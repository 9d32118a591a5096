"""``normalized-sds``: SDS whose per-sample gradient is rescaled to a fixed RMS.

SDS's gradient size swings with t and with the guidance scale; dividing each sample's
w(t) (e_cfg - eps) by its RMS and multiplying by ``target_rms`` keeps the step size steady, so
one learning rate suits every scale. A small, complete example of a third-party guidance: it
reuses scorelift's SDS for sampling, the UNet call and the gradient injection, and changes only
``direction``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift import ConfigError, SDSConfig, SDSGuidance, register


@dataclass
class NormalizedSDSConfig(SDSConfig):
    """SDS's options and defaults (``guidance=normalized-sds`` composes them), plus one."""

    target_rms: float = 1.0  # RMS of each sample's direction after rescaling


@register("guidance", "normalized-sds")
class NormalizedSDSGuidance(SDSGuidance):
    Config = NormalizedSDSConfig

    @classmethod
    def check_config(cls, cfg: NormalizedSDSConfig) -> None:
        super().check_config(cfg)
        if not cfg.target_rms > 0:
            raise ConfigError(f"guidance.target_rms={cfg.target_rms} must be positive (default 1.0).")

    def direction(self, e_c: torch.Tensor, e_u: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """e_cfg - eps, each sample [C, h, w] rescaled to RMS ``target_rms``."""
        d = super().direction(e_c, e_u, eps, t)
        rms = d.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, *([1] * (d.ndim - 1)))
        return d * (self.cfg.target_rms / rms)
