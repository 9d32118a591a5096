"""SDS whose per-sample direction is rescaled to a fixed RMS (one learning rate suits every CFG scale)."""
from dataclasses import dataclass

from scorelift import ConfigError, SDSConfig, SDSGuidance, register

@dataclass
class RMSNormalizedSDSConfig(SDSConfig):  # SDS's options and defaults, plus one
    target_rms: float = 1.0  # RMS of each sample's direction after rescaling

@register("guidance", "rms-sds")
class RMSNormalizedSDS(SDSGuidance):
    Config = RMSNormalizedSDSConfig

    @classmethod
    def check_config(cls, cfg: RMSNormalizedSDSConfig) -> None:
        super().check_config(cfg)
        if not cfg.target_rms > 0:
            raise ConfigError(f"guidance.target_rms={cfg.target_rms} must be positive (default 1.0).")

    def direction(self, e_c, e_u, eps, t):  # [B, C, h, w] each; t: [B]
        d = super().direction(e_c, e_u, eps, t)  # e_cfg - eps
        rms = d.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
        return d * (self.cfg.target_rms / rms).view(-1, 1, 1, 1)
