"""Score Distillation Sampling (DreamFusion), per docs/methods.md: the guidance registered as ``sds``
(``scorelift.plugins.guidance.sds``) and the base class of guidances that change its direction.

    t ~ U{t_min .. t_max},  eps ~ N(0, I),  z_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps
    g = w(t) (e_cfg(z_t, t) - eps),  w = 1 - ab_t ("sds") or 1 ("uniform")

and g is injected as dL/dz (divided by the batch size) through an MSE against a detached
target. The UNet runs under no_grad: its Jacobian is dropped by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..interfaces.guidance import Guidance, GuidanceOutput
from ..interfaces.prior import Conditioning, DiffusionPrior
from ..maths import score_math as sm

WEIGHTINGS = ("sds", "uniform")


@dataclass(kw_only=True)
class SDSConfig:
    """Options of ``sds`` and their defaults (``guidance=sds guidance.<option>=...``)."""

    # Classifier-free guidance scale, in the formula ``cfg_convention`` names:
    #   standard:    e_u + s (e_c - e_u)   (diffusers; s = 1 is the conditional model alone)
    #   threestudio: e_c + s (e_c - e_u)   (= standard with s + 1)
    # 100 in the threestudio convention is also the DreamFusion paper's ((1 + w) e_c - w e_u, w = 100).
    guidance_scale: float = 100.0
    cfg_convention: str = "threestudio"
    # w(t): sds = 1 - alpha_bar[t]; uniform = 1.
    weighting: str = "sds"
    # t ~ U{int(T * min) .. int(T * max)}; each a number or [start_step, start_value, end_value, end_step].
    min_step_percent: Any = 0.02
    max_step_percent: Any = 0.98
    # Element-wise clamp of g (a number or schedule), or null for none.
    grad_clip: Any = None


class SDSGuidance(Guidance):
    # one line for `scorelift --list`
    summary = "Score distillation sampling, DreamFusion's gradient (Poole et al. 2022)."

    Config = SDSConfig
    # Draws through score_math on generator.device. A subclass that draws in its own __call__ with
    # CPU-only calls sets this back to False.
    draws_on_device = True

    @classmethod
    def check_config(cls, c: SDSConfig) -> None:
        sm.check_cfg_convention(c.cfg_convention)
        if c.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting={c.weighting!r} is not known; use one of {', '.join(WEIGHTINGS)}.")
        sm.check_step_schedules(c)

    def __init__(self, cfg: Any, prior: DiffusionPrior):
        super().__init__(cfg, prior)
        self.update_step(0, 1)

    def update_step(self, step: int, max_steps: int) -> None:
        self.t_min, self.t_max, self.grad_clip = sm.scheduled_step_state(self.cfg, step, self.prior.num_train_timesteps)

    def direction(self, e_c: torch.Tensor, e_u: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The estimator before weighting: e_cfg - eps (all [B, C, h, w]; t: [B]). SSD overrides it."""
        return sm.cfg_combine(e_c, e_u, self.cfg.guidance_scale, self.cfg.cfg_convention) - eps

    def __call__(
        self,
        image: torch.Tensor,
        is_latent: bool,
        text: Conditioning,
        generator: torch.Generator,
        cameras=None,
    ) -> GuidanceOutput:
        """image: [B, C, h, w] latents or [B, 3, H, W] RGB in [0, 1]; text: [B, L, D] embeddings.

        Draws t ([B]) then eps (like z) from ``generator``, on its device.
        Returns {"loss", "grad_norm" (|g| over the batch), "t_mean"}; diagnostics detached.
        """
        prior = self.prior
        z = sm.render_latents(prior, image, is_latent)  # [B, C, h, w] fp32, differentiable
        B, dev = z.shape[0], z.device
        t = sm.sample_timesteps(B, self.t_min, self.t_max, generator, dev)
        eps = sm.sample_noise(z.shape, generator, dev)
        ab = sm.per_sample(prior.alphas_cumprod.to(dev)[t], z.ndim)
        with torch.no_grad():
            z_t = ab.sqrt() * z.detach() + (1.0 - ab).sqrt() * eps
            e_c, e_u = prior.predict_eps(
                z_t, t, sm.expand_text(text.cond, B, "cond"), sm.expand_text(text.uncond, B, "uncond")
            )
            delta = self.direction(e_c.to(dev).float(), e_u.to(dev).float(), eps, t)
            w = (1.0 - ab) if self.cfg.weighting == "sds" else torch.ones_like(ab)
            # No nan_to_num: a non-finite score makes the loss non-finite and the system skips the
            # step (zeroing it would train on zeros without a word).
            g = sm.clamp_score(w * delta, self.grad_clip)
        return {
            "loss": sm.inject_gradient(z, g),
            "grad_norm": g.norm().detach(),
            "t_mean": t.float().mean().detach(),
        }
