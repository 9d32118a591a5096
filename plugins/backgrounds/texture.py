"""Learned low-resolution background texture (SJC's 4x4 latent background).

``mapping: screen`` stretches the texture over the image (bilinear upsampling of the
[C, r, r] texture to [C, H, W], the same for every view). ``mapping: spherical`` looks the
texture up by ray direction instead (u: angle from +z, v: azimuth), as the SJC authors'
renderer does, so the background turns with the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from scorelift.errors import ConfigError
from scorelift.interfaces.background import Background
from scorelift.registry import register
from scorelift.library.background_options import check_common

MAPPINGS = ("screen", "spherical")


@dataclass(kw_only=True)
class TextureBackgroundConfig:
    """Options of ``texture`` and their defaults (``background=texture background.<option>=...``):
    SJC's learned 4x4 latent background, blended as (1 - opacity) * bg."""

    n_features: int = 4  # C, must equal the geometry's
    resolution: int = 4  # r: the texture is r x r (SJC: 4)
    # screen: upsampled over the image; spherical: looked up by ray direction (the authors' code).
    mapping: str = "screen"
    activation: str = "none"  # none (latents) | sigmoid (RGB)
    # Per-channel mean of the start; [] = zeros (SJC). The shapes SJC preset holds it at RGB white, [1, 1, 1].
    init_mean: list[float] = field(default_factory=list)
    init_std: float = 1.0  # texture starts as N(init_mean, std^2) (SJC: 1, the authors' randn)
    init_seed: int = 0  # seed of that draw (independent of the global RNG)


@register("background", "texture")
class TextureBackground(Background):
    """Parameter ``texture`` [1, C, r, r]; forward(rays_d [B, H, W, 3]) -> [B, H, W, C]."""

    # one line for `scorelift --list`
    summary = "A learned low-resolution texture, over the screen or by ray direction (SJC's latent background)."

    Config = TextureBackgroundConfig

    @classmethod
    def check_config(cls, c: TextureBackgroundConfig) -> None:
        check_common("texture", c.n_features, c.activation)
        if c.resolution < 1:
            raise ConfigError(f"background (texture) resolution={c.resolution} must be at least 1 (SJC: 4).")
        if c.mapping not in MAPPINGS:
            raise ConfigError(
                f"background (texture) mapping={c.mapping!r} is not one of {', '.join(MAPPINGS)}: 'screen' "
                f"stretches the texture over the image, 'spherical' looks it up by ray direction."
            )
        if len(c.init_mean) not in (0, c.n_features):
            raise ConfigError(
                f"background (texture) init_mean has {len(c.init_mean)} values but n_features={c.n_features}; "
                f"give one per channel or [] for zeros."
            )

    def __init__(self, cfg=None):
        super().__init__(cfg)
        c = self.cfg
        self.n_features = c.n_features
        gen = torch.Generator().manual_seed(c.init_seed)
        mean = torch.tensor(c.init_mean or [0.0] * c.n_features, dtype=torch.float32).view(1, -1, 1, 1)
        noise = torch.randn((1, c.n_features, c.resolution, c.resolution), generator=gen)
        self.texture = torch.nn.Parameter(mean + noise * c.init_std)

    def forward(self, rays_d: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = rays_d.shape
        tex = self.texture.to(rays_d.dtype)
        if self.cfg.mapping == "screen":
            img = F.interpolate(tex, size=(H, W), mode="bilinear", align_corners=False)  # [1, C, H, W]
            out = img.permute(0, 2, 3, 1).expand(B, H, W, -1)
        else:
            x, y, z = rays_d.unbind(dim=-1)
            polar = torch.atan2(torch.sqrt(x * x + y * y), z) / math.pi  # [0, 1]
            azim = torch.atan2(y, x) / (2.0 * math.pi) + 0.5  # [0, 1]
            uv = torch.stack([polar, azim], dim=-1).reshape(1, B * H * W, 1, 2) * 2.0 - 1.0
            val = F.grid_sample(tex, uv, mode="bilinear", padding_mode="border", align_corners=False)
            out = val.reshape(-1, B, H, W).permute(1, 2, 3, 0)
        return torch.sigmoid(out) if self.cfg.activation == "sigmoid" else out
