"""``paas``: Score Jacobian Chaining with Perturb-and-Average Scoring, per docs/methods.md.

The eps model seen as a variance-exploding denoiser: for the clean render ``y`` and a DDPM
tick t with ``sigma = sqrt((1 - ab_t) / ab_t)``, draw n ~ N(0, I), ``z = y + sigma n`` and

    D(z, sigma) = z - sigma * e_cfg(z / sqrt(1 + sigma^2), t)      (integer t, never sigma)

Ascent direction per draw: var_red (Eq. 16) ``(D - y) / sigma = n - e_cfg``; otherwise (Eq. 15)
``(D - z) / sigma = -e_cfg``. ``perturb: false`` scores the clean render itself (n = 0: the
naive score the paper shows failing, kept as an ablation). Averaged over ``n_samples`` draws; dL/dy is minus that average
(``e_cfg - n`` with var_red: SDS with uniform weight), injected like SDS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scorelift.errors import ConfigError
from scorelift.interfaces.guidance import Guidance, GuidanceOutput
from scorelift.interfaces.prior import Conditioning, DiffusionPrior
from scorelift.registry import register
from scorelift.schedule import check_scheduled, scheduled
from scorelift.maths import score_math as sm

SIGMA_SCHEDULES = ("random", "annealed")


@dataclass(kw_only=True)
class PAASConfig:
    """Options of ``paas`` (SJC with Perturb-and-Average Scoring) and their defaults."""

    # CFG as in sds (standard: e_u + s (e_c - e_u); threestudio: e_c + s (e_c - e_u)). SJC's
    # authors combine in the standard form at 100; 100 here in the threestudio form is standard 101.
    guidance_scale: float = 100.0
    cfg_convention: str = "threestudio"
    # DDPM index range of the noise level (inclusive): sigma in [0.098, 12.2] for SD's schedule.
    t_min: int = 10
    # A number, or a schedule [start_step, start_value, end_value, end_step] of DDPM indices
    # (scorelift.schedule; random schedule only), as SDS's max_step_percent.
    t_max: Any = 969
    # random: t uniform over {t_min .. t_max} (uniform in the index, not in sigma) each step;
    # annealed: t decreases linearly from t_max to t_min over the run's max_steps.
    sigma_schedule: str = "random"
    # true: ascent (D - y)/sigma = n - e_cfg (paper Eq. 16); false: (D - z)/sigma = -e_cfg (Eq. 15).
    var_red: bool = True
    # Noise draws averaged per step (the authors used 1); each costs one UNet call of batch 2B.
    n_samples: int = 1
    # false: the naive score SJC argues against (its Sec. 3.3): the denoiser is evaluated at the
    # clean render itself, z = y (no noise added, n = 0), at the same noise levels, so the ascent is
    # -e_cfg(y / sqrt(1 + sigma^2), t). An ablation for the paper's claim; never a better default.
    perturb: bool = True


@register("guidance", "paas")
class PAASGuidance(Guidance):
    # one line for `scorelift --list`
    summary = "Perturb-and-average scoring, SJC's gradient (Wang et al. 2023)."

    Config = PAASConfig
    draws_on_device = True  # every draw goes through score_math on generator.device

    @classmethod
    def check_config(cls, c: PAASConfig) -> None:
        sm.check_cfg_convention(c.cfg_convention)
        if c.sigma_schedule not in SIGMA_SCHEDULES:
            raise ConfigError(
                f"guidance.sigma_schedule={c.sigma_schedule!r} is not known; use one of {', '.join(SIGMA_SCHEDULES)}."
            )
        if c.n_samples < 1:
            raise ConfigError(f"guidance.n_samples={c.n_samples} must be at least 1.")
        check_scheduled(c.t_max, "guidance.t_max")
        if not isinstance(c.t_max, (int, float)) and c.sigma_schedule == "annealed":
            raise ConfigError(
                f"guidance.t_max={list(c.t_max)} is a schedule, which only the random sigma schedule "
                f"follows; the annealed one already falls from t_max to t_min. Give t_max as one number "
                f"with sigma_schedule=annealed."
            )

    def __init__(self, cfg: Any, prior: DiffusionPrior):
        super().__init__(cfg, prior)
        c = self.cfg
        T = prior.num_train_timesteps  # the index range depends on the prior's schedule
        t_max_values = [c.t_max] if isinstance(c.t_max, (int, float)) else [c.t_max[1], c.t_max[2]]
        for t_max in t_max_values:
            if not (0 <= c.t_min <= t_max <= T - 1) or t_max != int(t_max):
                raise ConfigError(
                    f"guidance t_min={c.t_min}, t_max={c.t_max} must satisfy 0 <= t_min <= t_max <= {T - 1} "
                    f"in whole DDPM indices of the prior's {T}-step schedule (for a scheduled t_max, its "
                    f"start and end values)."
                )
        self.sigmas = sm.sigmas_from_alphas_cumprod(prior.alphas_cumprod.float())  # [T]
        self.update_step(0, 1)

    def update_step(self, step: int, max_steps: int) -> None:
        """Random schedule: t_max at this step (scheduled or fixed). Annealed schedule: t falls
        linearly from t_max (step 0) to t_min (step max_steps - 1)."""
        c = self.cfg
        self.t_max = int(round(scheduled(c.t_max, step)))
        frac = min(max(step / max(max_steps - 1, 1), 0.0), 1.0)
        self.t_annealed = int(round(self.t_max - frac * (self.t_max - c.t_min)))

    def _timesteps(self, B: int, generator: torch.Generator, device) -> torch.Tensor:
        if self.cfg.sigma_schedule == "annealed":
            return torch.full((B,), self.t_annealed, dtype=torch.long, device=device)
        return sm.sample_timesteps(B, self.cfg.t_min, self.t_max, generator, device)

    def __call__(
        self,
        image: torch.Tensor,
        is_latent: bool,
        text: Conditioning,
        generator: torch.Generator,
        cameras=None,
    ) -> GuidanceOutput:
        """image: [B, C, h, w] latents (SJC renders latents) or [B, 3, H, W] RGB in [0, 1].

        Draws t ([B], random schedule only) then n_samples noises (like y) from ``generator``
        (on its device); one t per image for all its draws. Returns {"loss", "grad_norm",
        "sigma_mean", "t_mean"}; diagnostics detached.
        """
        prior = self.prior
        y = sm.render_latents(prior, image, is_latent)  # [B, C, h, w] fp32, differentiable
        B, dev = y.shape[0], y.device
        t = self._timesteps(B, generator, dev)
        sigma = sm.per_sample(self.sigmas.to(dev)[t], y.ndim)  # [B, 1, 1, 1]
        cond = sm.expand_text(text.cond, B, "cond")
        uncond = sm.expand_text(text.uncond, B, "uncond")
        ascent = torch.zeros_like(y, dtype=torch.float32)
        with torch.no_grad():
            for _ in range(self.cfg.n_samples):
                n = sm.sample_noise(y.shape, generator, dev)
                if not self.cfg.perturb:
                    n = torch.zeros_like(n)  # drawn all the same, so the generator's stream is unchanged
                z_ve = y.detach() + sigma * n
                # The DDPM input for the VE point z_ve: sqrt(ab) (y + sigma n) = z_ve / sqrt(1 + sigma^2).
                e_c, e_u = prior.predict_eps(z_ve / (1.0 + sigma**2).sqrt(), t, cond, uncond)
                e_cfg = sm.cfg_combine(e_c.to(dev), e_u.to(dev), self.cfg.guidance_scale, self.cfg.cfg_convention)
                # (D - y)/sigma and (D - z_ve)/sigma in closed form, with D = z_ve - sigma e_cfg:
                # dividing by a small sigma (0.03 at t = 0) would only add rounding error.
                ascent += (n - e_cfg) if self.cfg.var_red else -e_cfg
            # Not zeroed where non-finite: the loss turns non-finite and the system skips the step.
            g = -ascent / self.cfg.n_samples
        return {
            "loss": sm.inject_gradient(y, g),
            "grad_norm": g.norm().detach(),
            "sigma_mean": sigma.mean().detach(),
            "t_mean": t.float().mean().detach(),
        }
