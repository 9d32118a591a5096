"""``ssd``: Stable Score Distillation, per docs/methods.md (SSD section).

The SDS estimator splits into three terms (threestudio CFG convention, scale w):

    e_cfg - eps = w * h  +  e_c  +  (-eps),   h = e_c - e_u

h is the mode-disengaging term (alone: CSD), e_c the mode-seeking term and -eps the
variance-reducing one. SSD replaces e_c - eps by the control-variate form d_ms = e_c - c * eps,
c = <e_c, eps> / <eps, eps> per sample (the projection ratio), and picks the terms by timestep:

    switch (default):  t > tau: delta = w h;   t <= tau: delta = d_ms * |w h| / |d_ms|
    add:               t > tau: delta = w h;   t <= tau: delta = w h + d_ms * |w h| / |d_ms|

(norms per sample over all of C, h, w). ``rescale: false`` drops the |w h| / |d_ms| factor and
``control_coefficient`` may fix c instead of projecting. The paper's equations did not survive
in the seed; ``add`` is our reading of "combine", chosen so that tau = T, c = 1 and no rescale
give back SDS exactly. Then g = w(t) * delta with SDS's weighting, t range and clamp: sampling,
the UNet call and the gradient injection are SDS's (this class only changes ``direction``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from scorelift.errors import ConfigError
from scorelift.registry import register
from scorelift.library.sds import SDSConfig, SDSGuidance

log = logging.getLogger(__name__)

COMBINES = ("switch", "add")


@dataclass(kw_only=True)
class SSDConfig(SDSConfig):
    """SDS's options and defaults (CFG, weighting, t range, clamp; SSD works at scale 7.5 as
    well as 100) plus SSD's own."""

    # t > tau: the mode-disengaging term w (e_c - e_u) alone; t <= tau: the variance-reduced
    # mode-seeking term (switch) or both (add). Paper: 200 of 1000. tau = 0 is CSD.
    tau: int = 200
    combine: str = "switch"
    # c in d_ms = e_c - c eps: "projection" (<e_c, eps> / <eps, eps> per sample) or a fixed number.
    control_coefficient: Any = "projection"
    # Rescale d_ms to the norm of the mode-disengaging term (no colour saturation).
    rescale: bool = True


def disengaging_scale(scale: float, convention: str) -> float:
    """w of e_cfg = e_c + w (e_c - e_u): the scale itself (threestudio) or scale - 1 (standard)."""
    return float(scale) if convention == "threestudio" else float(scale) - 1.0


def projection_ratio(e_c: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """c = <e_c, eps> / <eps, eps> per sample: [B, ...] x [B, ...] -> [B]."""
    a, b = e_c.flatten(1), eps.flatten(1)
    return (a * b).sum(1) / (b * b).sum(1).clamp_min(1e-12)


def per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B, 1, ..., 1] L2 norm of each sample."""
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


@register("guidance", "ssd")
class SSDGuidance(SDSGuidance):
    # one line for `scorelift --list`
    summary = "Stable score distillation: SDS split into its terms, picked by timestep (Tang et al. 2023)."

    Config = SSDConfig

    @classmethod
    def check_config(cls, c: SSDConfig) -> None:
        super().check_config(c)
        if c.combine not in COMBINES:
            raise ConfigError(f"guidance.combine={c.combine!r} is not known; use one of {', '.join(COMBINES)}.")
        if c.control_coefficient != "projection" and not isinstance(c.control_coefficient, (int, float)):
            raise ConfigError(
                f"guidance.control_coefficient={c.control_coefficient!r} must be 'projection' or a number "
                f"(1 gives SDS's e_c - eps, 0 the bare mode-seeking term e_c)."
            )

    def __init__(self, cfg: Any, prior):
        super().__init__(cfg, prior)  # SDS's __init__ runs check_config
        T = prior.num_train_timesteps  # tau's range depends on the prior's schedule
        if not 0 <= int(self.cfg.tau) <= T:
            raise ConfigError(f"guidance.tau={self.cfg.tau} must lie in 0..{T} (a DDPM index; the paper uses 200; 0 is CSD).")
        # Without an unconditional branch (an unconditional prior, a class prior without a null
        # class) h = e_c - e_u is zero: no mode-disengaging term, and nothing to rescale d_ms to.
        # What is left of SSD is its variance-reduced mode-seeking term d_ms, used at every t.
        self.unguided = getattr(prior, "conditioning", "text") == "none" or not getattr(prior, "has_unconditional", True)
        if self.unguided:
            log.info("guidance=ssd on a prior without an unconditional branch: h = e_c - e_u is zero, so the "
                     "guidance is SSD's variance-reduced term d_ms = e - c eps at every t, not rescaled (tau, "
                     "combine and rescale do not apply).")

    def terms(self, e_c: torch.Tensor, e_u: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decomposition: w h (mode-disengaging), e_c (mode-seeking), -eps (variance-reducing),
        c ([B]) and d_ms = e_c - c eps; tensors [B, C, h, w]."""
        w = disengaging_scale(self.cfg.guidance_scale, self.cfg.cfg_convention)
        if self.cfg.control_coefficient == "projection":
            c = projection_ratio(e_c, eps)
        else:
            c = torch.full((e_c.shape[0],), float(self.cfg.control_coefficient), device=e_c.device)
        d_ms = e_c - c.view(-1, *([1] * (e_c.ndim - 1))) * eps
        return {"disengaging": w * (e_c - e_u), "seeking": e_c, "variance": -eps, "c": c, "d_ms": d_ms}

    def direction(self, e_c: torch.Tensor, e_u: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = self.terms(e_c, e_u, eps)
        wh, d_ms = parts["disengaging"], parts["d_ms"]
        if self.unguided:
            return d_ms
        if self.cfg.rescale:
            d_ms = d_ms * per_sample_norm(wh) / per_sample_norm(d_ms).clamp_min(1e-12)
        low = (t <= int(self.cfg.tau)).view(-1, *([1] * (wh.ndim - 1)))
        seeking = d_ms if self.cfg.combine == "switch" else wh + d_ms
        return torch.where(low, seeking, wh)
