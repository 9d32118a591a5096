"""Exact conversions between the parameterisations diffusion models are trained in and the one
the guidance math uses (docs/methods.md, 1.2a "Priors in other parameterisations").

The guidance works in variance-preserving (VP) notation at integer ticks t of a table
``alphas_cumprod`` [T]: ``z_t = sqrt(ab_t) y + sqrt(1 - ab_t) eps``, and asks the prior for eps.
A variance-exploding (VE) model (score-SDE / NCSN++) is trained on ``x = y + sigma eps``; the two
describe the same noisy point, ``x = z_t / sqrt(ab_t)``, with

    sigma_t = sqrt((1 - ab_t) / ab_t)      ab_t = 1 / (1 + sigma_t^2)

and the same eps. What a network outputs (``prediction_type``), and how it becomes eps:

    VP epsilon:      eps = out
    VP v_prediction: eps = sqrt(ab) out + sqrt(1 - ab) z_t          (v = sqrt(ab) eps - sqrt(1 - ab) y)
    VP sample:       eps = (z_t - sqrt(ab) out) / sqrt(1 - ab)       (out = y)
    VE epsilon:      eps = out
    VE sample:       eps = (x - out) / sigma                          (out = y)
    VE score:        eps = -sigma out                                 (out = grad_x log p(x) = -eps / sigma)

All of it in float32 on the caller's tensors; ``ab`` broadcasts over [B, C, H, W] ([B, 1, 1, 1]).
"""

from __future__ import annotations

import torch

PARAMETERISATIONS = ("vp", "ve")  # variance-preserving (DDPM/DDIM) or variance-exploding (score-SDE)
# Which outputs each parameterisation can have: v is defined for VP only, a score output is the
# VE family's (diffusers' UNet2DModel with Fourier time features divides by sigma to give it).
VALID = {"vp": ("epsilon", "v_prediction", "sample"), "ve": ("epsilon", "sample", "score")}


def check_prediction(prediction_type: str, parameterisation: str) -> str | None:
    """None if the pair is supported, else the reason (one sentence) for an error message."""
    if parameterisation not in PARAMETERISATIONS:
        return f"the parameterisation {parameterisation!r} is not one of {', '.join(PARAMETERISATIONS)}"
    if prediction_type not in VALID[parameterisation]:
        return (f"a {parameterisation.upper()} model predicting {prediction_type!r} is not supported "
                f"({parameterisation.upper()} models here predict {', '.join(VALID[parameterisation])})")
    return None


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """VE noise levels [T] -> the equivalent VP ``alphas_cumprod`` [T]: ``1 / (1 + sigma^2)``."""
    s = sigmas.double()
    return (1.0 / (1.0 + s * s)).to(torch.float32)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """VP ``alphas_cumprod`` [T] -> VE noise levels [T]: ``sqrt((1 - ab) / ab)`` (in float64,
    returned in the input's dtype)."""
    ab = alphas_cumprod.double()
    return ((1.0 - ab) / ab).sqrt().to(alphas_cumprod.dtype)


def model_input(z_t: torch.Tensor, ab: torch.Tensor, parameterisation: str) -> torch.Tensor:
    """The network's input for the VP point ``z_t``: z_t itself (VP) or ``x = z_t / sqrt(ab)`` (VE)."""
    return z_t if parameterisation == "vp" else z_t / ab.sqrt()


def eps_from_output(out: torch.Tensor, z_t: torch.Tensor, ab: torch.Tensor, prediction_type: str,
                    parameterisation: str) -> torch.Tensor:
    """The network output ``out`` at the VP point ``z_t`` (both [B, C, H, W]) -> eps (module docstring)."""
    out, z_t, ab = out.float(), z_t.float(), ab.float()
    if prediction_type == "epsilon":
        return out
    if parameterisation == "vp":
        if prediction_type == "v_prediction":
            return ab.sqrt() * out + (1.0 - ab).sqrt() * z_t
        if prediction_type == "sample":
            return (z_t - ab.sqrt() * out) / (1.0 - ab).sqrt()
    else:
        sigma = sigmas_from_alphas_cumprod(ab)
        if prediction_type == "sample":
            return (z_t / ab.sqrt() - out) / sigma
        if prediction_type == "score":
            return -sigma * out
    raise ValueError(check_prediction(prediction_type, parameterisation) or f"unknown prediction {prediction_type!r}")


def training_target(y: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor, prediction_type: str,
                    parameterisation: str) -> torch.Tensor:
    """What the network's output should be at the point made of clean ``y`` and ``noise`` (the
    target of a denoising loss in the output's own space; VSD trains its LoRA copy on it).

    A VE score output is compared in eps space instead (``-sigma out`` against ``noise``): the
    output's own target ``-noise / sigma`` weights the smallest sigmas by 1 / sigma^2, and the
    eps-space loss is the sigma^2-weighted denoising score matching score-SDE models train with.
    The caller then compares ``eps_from_output(out)`` with this target (``loss_space``)."""
    if prediction_type == "epsilon" or prediction_type == "score":
        return noise
    if prediction_type == "v_prediction":
        return ab.sqrt() * noise - (1.0 - ab).sqrt() * y
    return y  # sample


def loss_space(prediction_type: str) -> str:
    """"eps" where the denoising loss compares eps (``training_target``), else "output"."""
    return "eps" if prediction_type == "score" else "output"
