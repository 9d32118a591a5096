"""``scaled-sds``: SDS whose direction is multiplied by ``strength``, or by ``strength`` times the
noise level when ``mode`` is ``by-t``.

Written to the plugin API as documented on 2026-11-29: the options are fields of a dataclass that
subclasses ``SDSConfig``, declared without defaults; their defaults live in the package's own YAML
file, named by ``config_file`` (so a value missing from it is an error, not a silent default).
"""

from dataclasses import dataclass
from pathlib import Path

from scorelift import ConfigError, SDSConfig, SDSGuidance, register

MODES = ("constant", "by-t")


@dataclass
class ScaledSDSConfig(SDSConfig):
    mode: str  # "constant" or "by-t"
    strength: float  # the factor on SDS's direction


@register("guidance", "scaled-sds")
class ScaledSDSGuidance(SDSGuidance):
    Config = ScaledSDSConfig
    config_file = Path(__file__).parent / "configs" / "guidance" / "scaled-sds.yaml"

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.mode not in MODES:
            raise ConfigError(f"guidance.mode={cfg.mode!r} must be one of {', '.join(MODES)}.")

    def direction(self, e_c, e_u, eps, t):
        d = super().direction(e_c, e_u, eps, t)
        if self.cfg.mode == "by-t":
            return d * (self.cfg.strength * t.float() / 1000.0).view(-1, 1, 1, 1)
        return d * self.cfg.strength
