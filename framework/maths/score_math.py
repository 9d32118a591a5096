"""Math shared by the score-distillation methods (docs/methods.md).

Pure tensor functions, no model: classifier-free guidance with a named convention, gradient
injection, the VP <-> VE noise-level maps and timestep sampling. Every random draw happens on
the CPU from an explicit ``torch.Generator`` and is then moved to the model's device, so a run
draws the same numbers on a CPU and on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .parameterisation import sigmas_from_alphas_cumprod  # noqa: F401  (the VE level of a tick)
from ..schedule import check_scheduled, scheduled
from ..transfer import to_device

CFG_CONVENTIONS = ("standard", "threestudio")


def check_cfg_convention(convention: str) -> None:
    if convention not in CFG_CONVENTIONS:
        raise ConfigError(
            f"cfg_convention={convention!r} is not known; use 'standard' (diffusers: e_u + s (e_c - e_u)) "
            f"or 'threestudio' (e_c + s (e_c - e_u), i.e. standard with s + 1)."
        )


def cfg_combine(e_c: torch.Tensor, e_u: torch.Tensor, scale: float, convention: str) -> torch.Tensor:
    """Classifier-free guidance, computed in float32.

    e_c, e_u: [B, C, h, w] conditional / unconditional eps predictions.
    - ``standard`` (diffusers): ``e_u + s (e_c - e_u)``; s = 1 is the conditional model alone.
    - ``threestudio`` (threestudio's SDS/SJC): ``e_c + s (e_c - e_u)``; equals standard with s + 1.
    fp32 because with s = 100 the small difference e_c - e_u is amplified 100x (fp16 loses it).
    """
    check_cfg_convention(convention)
    e_c, e_u = e_c.float(), e_u.float()
    base = e_u if convention == "standard" else e_c
    return base + scale * (e_c - e_u)


def inject_gradient(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A scalar loss whose gradient with respect to ``z`` is ``g / B``.

    z: [B, ...] the differentiable render (latent); g: [B, ...] the method's dL/dz per sample.
    ``0.5 * |z - sg(z - g)|^2 / B``: the division by B makes the loss a batch mean, as in the doc
    and threestudio, so dL/dz_b = g_b / B. Its value is 0.5 |g|^2 / B and says nothing about progress.
    A NaN or infinite entry of g makes the loss NaN or inf (the square of z - (z - g) is), so the
    system skips the step and counts it (``system.max_nonfinite_steps``) instead of training on it.
    """
    B = z.shape[0]
    target = (z.float() - g.float()).detach()
    return 0.5 * F.mse_loss(z.float(), target, reduction="sum") / B


def clamp_score(g: torch.Tensor, clip: float | None) -> torch.Tensor:
    """``g`` [B, ...] clamped element-wise to [-clip, clip] (``grad_clip``; None: unchanged). Only
    finite entries are clamped: a clamp keeps NaN but would turn +-inf into +-clip, a plausible
    value, and a non-finite score must reach the loss as such so that the step is skipped."""
    if clip is None:
        return g
    return torch.where(torch.isfinite(g), g.clamp(-clip, clip), g)


def timesteps_from_sigmas(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The DDPM index whose sigma is nearest to ``sigma`` (compared in log space); any shape -> long.

    SJC feeds the UNet the integer t of a tick, never sigma itself; sigma is increasing in t.
    """
    log_ticks = sigmas_from_alphas_cumprod(alphas_cumprod).double().log().to(sigma.device)
    diff = (sigma.double().log().unsqueeze(-1) - log_ticks).abs()
    return diff.argmin(dim=-1)


def step_range(min_percent: float, max_percent: float, num_train_timesteps: int) -> tuple[int, int]:
    """Inclusive DDPM index bounds from fractions of T (threestudio's ``int(T * p)``), checked."""
    t_min = int(num_train_timesteps * min_percent)
    t_max = min(int(num_train_timesteps * max_percent), num_train_timesteps - 1)
    if not (0 <= t_min <= t_max):
        raise ConfigError(
            f"min_step_percent={min_percent} and max_step_percent={max_percent} give the timestep range "
            f"[{t_min}, {t_max}] of T={num_train_timesteps}; both must lie in [0, 1) with min <= max."
        )
    return t_min, t_max


def sample_timesteps(
    batch_size: int, t_min: int, t_max: int, generator: torch.Generator, device: torch.device | str
) -> torch.Tensor:
    """[B] integer timesteps uniform on {t_min, ..., t_max} (inclusive), drawn on the generator's device."""
    draws = torch.randint(t_min, t_max + 1, (batch_size,), generator=generator, device=generator.device)
    return to_device(draws, device)


def sample_noise(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator, device: torch.device | str
) -> torch.Tensor:
    """Standard normal float32 noise of ``shape``, drawn on the generator's device (the CPU, or the
    run's GPU on the fast path) and moved to ``device``."""
    draws = torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=generator.device)
    return to_device(draws, device)


def per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] with ``ndim`` dims in all, to broadcast over a [B, C, h, w] tensor."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def expand_text(emb: torch.Tensor | None, batch_size: int, what: str) -> torch.Tensor | None:
    """A conditioning entry for B or 1 views -> for B views: [B or 1, L, D] embeddings or [B or 1]
    class labels; None (an unconditional prior) stays None. A mismatch is an error naming both sizes."""
    if emb is None or emb.shape[0] == batch_size:
        return emb
    if emb.shape[0] == 1:
        return emb.expand(batch_size, *emb.shape[1:])
    raise ValueError(
        f"The text conditioning ({what}) holds {emb.shape[0]} embeddings but the render batch has "
        f"{batch_size} images; build it with prior.condition(prompt, cameras.view_names())."
    )


def render_latents(prior, image: torch.Tensor, is_latent: bool) -> torch.Tensor:
    """The differentiable latent ``z`` [B, C, h, w] (float32) that guidance acts on.

    Latent renders are used as they are (their channels and size match the prior's: the
    start-up check saw to that); RGB renders [B, 3, H, W] in [0, 1] go through the prior's VAE
    encoder with gradient (resized to its pixel size there).
    """
    if is_latent:
        return image.float()
    return prior.encode_images(image)


def check_step_schedules(cfg) -> None:
    """Validate the scheduled scalars SDS-family guidances share: min_step_percent,
    max_step_percent and grad_clip (null allowed)."""
    check_scheduled(cfg.min_step_percent, "guidance.min_step_percent")
    check_scheduled(cfg.max_step_percent, "guidance.max_step_percent")
    if cfg.grad_clip is not None:
        check_scheduled(cfg.grad_clip, "guidance.grad_clip")


def scheduled_step_state(cfg, step: int, num_train_timesteps: int) -> tuple[int, int, float | None]:
    """(t_min, t_max, grad_clip) of an SDS-family config at training step ``step``."""
    t_min, t_max = step_range(scheduled(cfg.min_step_percent, step), scheduled(cfg.max_step_percent, step), num_train_timesteps)
    return t_min, t_max, None if cfg.grad_clip is None else scheduled(cfg.grad_clip, step)

