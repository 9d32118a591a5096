"""Ray marching with a fixed number of samples per ray between two planes (a one-file renderer)."""
from dataclasses import dataclass

import torch

from scorelift import ConfigError, RenderOutput, Renderer, register

@dataclass
class FewSamplesConfig:
    n_samples: int = 48  # samples per ray
    near: float = 1.5  # distance of the first sample from the camera
    far: float = 4.5  # distance of the last

@register("renderer", "few-samples")
class FewSamplesRenderer(Renderer):
    Config = FewSamplesConfig
    draws_on_device = False

    @classmethod
    def check_config(cls, cfg: FewSamplesConfig) -> None:
        if cfg.n_samples < 2 or not 0 <= cfg.near < cfg.far:
            raise ConfigError(f"renderer n_samples={cfg.n_samples} must be at least 2 and 0 <= near < far.")

    def forward(self, geometry, background, rays_o, rays_d, generator=None):  # rays [B, H, W, 3]
        c = self.cfg
        B, H, W, _ = rays_d.shape
        edges = torch.linspace(c.near, c.far, c.n_samples + 1, dtype=rays_d.dtype)
        delta = (edges[1:] - edges[:-1]).to(rays_d.device)  # [S]
        u = 0.5
        if self.training and generator is not None:
            u = torch.rand((B, H, W, c.n_samples), generator=generator).to(rays_d.device)
        t = edges[:-1].to(rays_d.device) + u * delta  # [S] or [B, H, W, S]
        t = t.expand(B, H, W, c.n_samples)
        points = rays_o[..., None, :] + t[..., None] * rays_d[..., None, :]  # [B, H, W, S, 3]
        out = geometry(points.reshape(-1, 3))
        sigma = out.density.reshape(B, H, W, c.n_samples)
        alpha = 1.0 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1]], dim=-1), dim=-1)
        weights = alpha * trans  # [B, H, W, S]
        features = out.features.reshape(B, H, W, c.n_samples, -1)
        opacity = weights.sum(-1, keepdim=True)
        color = (weights[..., None] * features).sum(-2) + (1.0 - opacity) * background(rays_d)
        depth = (weights * t).sum(-1, keepdim=True)
        return RenderOutput(color=color, opacity=opacity, depth=depth, weights=weights)
