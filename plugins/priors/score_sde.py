"""The ``score-sde`` prior: a variance-exploding score model, diffusers' ``ScoreSdeVePipeline``
layout (model_index.json, unet/ a ``UNet2DModel`` with Fourier time features, scheduler/ a
``ScoreSdeVeScheduler``), as the NCSN++ models of Song et al. (2021) on the hub.

The network takes (x, sigma) with x = y + sigma n and returns the score grad_x log p_sigma(x)
(diffusers' Fourier UNet2DModel divides its output by sigma for that). Its noise levels are the
geometric ladder sigma_min .. sigma_max of the SDE; the prior exposes them as ticks of the VP
table ``ab = 1 / (1 + sigma^2)`` so that the guidance math, written once in VP notation, applies
unchanged (docs/methods.md, "Priors and their parameterisations"). Data range [0, 1], as the
pipeline's output clamp says. Unconditional.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from scorelift.interfaces.base import parsed_config
from scorelift.maths import parameterisation as pz
from scorelift.library.pixel_prior import (
    WEIGHT_FILES,
    PixelDenoiserPrior,
    check_weights,
    load_diffusers_pipeline,
    pipeline_source,
)
from scorelift.library.pipelines import check_pipeline_dir, load_error, locate_pipeline, read_json, resolve_dtype
from scorelift.registry import register

REQUIRED_PARTS: dict[str, list[tuple[str, ...]]] = {
    "unet": [("config.json",), WEIGHT_FILES],
    "scheduler": [("scheduler_config.json",)],
}

VALID_LAYOUT = (
    "A valid score-sde prior is a diffusers ScoreSdeVePipeline directory (the save_pretrained layout): "
    "model_index.json plus unet/ (a UNet2DModel with time_embedding_type 'fourier': config.json and weights) "
    "and scheduler/ (scheduler_config.json of a ScoreSdeVeScheduler). Point `prior.model` at such a directory "
    "(e.g. `prior.model=/path/to/ncsnpp-ffhq-256`), or at a hub id with `prior.local_files_only=false` on a "
    "machine with network access; DDPM/DDIM models load with `prior=diffusers-unet`."
)

# The defaults diffusers' ScoreSdeVeScheduler uses for a config that omits them.
SCHEDULER_DEFAULTS = {"num_train_timesteps": 2000, "sigma_min": 0.01, "sigma_max": 1348.0}


def ve_sigma_ladder(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    """[n] float64 sigmas sigma_min .. sigma_max, geometric: sigma_i = sigma_min (sigma_max /
    sigma_min)^(i / (n - 1)), the discrete noise levels of the VE SDE (diffusers' discrete_sigmas)."""
    s = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return torch.exp(math.log(sigma_min) + s * (math.log(sigma_max) - math.log(sigma_min)))


@dataclass(kw_only=True)
class ScoreSdePriorConfig:
    """Options of the ``score-sde`` prior and their defaults (``prior=score-sde prior.<option>=...``)."""

    # Local pipeline directory (ScoreSdeVePipeline layout) or a Hugging Face hub id.
    model: str = "google/ncsnpp-ffhq-256"
    # Offline-first: never touch the network; set false to download a hub id.
    local_files_only: bool = True
    # auto: float16 on CUDA, float32 elsewhere; or float32 | float16 | bfloat16.
    dtype: str = "auto"


def schedule_facts(sched: dict, model: str) -> tuple[int, float, float]:
    """(n, sigma_min, sigma_max) of a ScoreSdeVeScheduler config, checked."""
    merged = {**SCHEDULER_DEFAULTS, **{k: v for k, v in sched.items() if k in SCHEDULER_DEFAULTS}}
    try:
        n, lo, hi = int(merged["num_train_timesteps"]), float(merged["sigma_min"]), float(merged["sigma_max"])
    except (TypeError, ValueError):
        raise load_error(model, f"its scheduler_config.json has unusable sigma settings {merged}", VALID_LAYOUT) from None
    if not (n >= 2 and 0 < lo < hi and math.isfinite(hi)):
        raise load_error(
            model, f"its scheduler has num_train_timesteps={n}, sigma_min={lo}, sigma_max={hi}; a VE ladder needs "
            f"at least 2 levels and 0 < sigma_min < sigma_max", VALID_LAYOUT)
    return n, lo, hi


def model_facts(path, model: str) -> dict:
    """Check a score-SDE pipeline directory without loading weights and return its start-up facts."""
    check_pipeline_dir(path, model, REQUIRED_PARTS, VALID_LAYOUT)
    read_json(path / "model_index.json", model, VALID_LAYOUT)
    unet = read_json(path / "unet" / "config.json", model, VALID_LAYOUT)
    sched = read_json(path / "scheduler" / "scheduler_config.json", model, VALID_LAYOUT)
    check_weights(path / "unet", model, VALID_LAYOUT)
    if sched.get("_class_name") != "ScoreSdeVeScheduler":
        raise load_error(model, f"its scheduler is {sched.get('_class_name')!r}, not ScoreSdeVeScheduler "
                         f"(DDPM/DDIM models: prior=diffusers-unet)", VALID_LAYOUT)
    if unet.get("time_embedding_type") != "fourier":
        raise load_error(model, f"its UNet's time_embedding_type is {unet.get('time_embedding_type')!r}; a score-SDE "
                         f"UNet2DModel embeds sigma with 'fourier' features (and so returns the score)", VALID_LAYOUT)
    schedule_facts(sched, model)
    try:
        channels, size = int(unet["in_channels"]), int(unet["sample_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise load_error(model, f"its unet/config.json lacks a usable {exc}", VALID_LAYOUT) from None
    if channels != 3 or int(unet.get("out_channels", channels)) != channels:
        raise load_error(model, f"its UNet maps {channels} to {unet.get('out_channels')} channels; a score-SDE "
                         f"pixel prior maps RGB to its score (3 to 3)", VALID_LAYOUT)
    return {"space": "pixel", "conditioning": "none", "has_unconditional": True,
            "latent_channels": channels, "latent_size": size, "pixel_size": size}


@register("prior", "score-sde")
class ScoreSdePrior(PixelDenoiserPrior):
    """A frozen VE score model. Attributes beyond PixelDenoiserPrior's: sigmas [T] float64 (the
    ladder; ``alphas_cumprod = 1 / (1 + sigmas^2)`` in float32)."""

    # one line for `scorelift --list`
    summary = "A pixel-space VE score model (score SDE, Song et al. 2021)."

    Config = ScoreSdePriorConfig
    capabilities = frozenset({"trainable_denoiser"})
    conditioning = "none"
    parameterisation = "ve"
    data_range = (0.0, 1.0)

    def __init__(self, cfg: Any = None, device: torch.device | str = "cpu"):
        super().__init__(cfg)
        c = self.cfg
        device = torch.device(device)
        source, local = pipeline_source(c.model, REQUIRED_PARTS, VALID_LAYOUT)
        if local is not None:
            model_facts(local, c.model)
        self.dtype = resolve_dtype(c.dtype, device)
        pipe = load_diffusers_pipeline(source, self.dtype, c.local_files_only, c.model, VALID_LAYOUT)
        unet, scheduler = getattr(pipe, "unet", None), getattr(pipe, "scheduler", None)
        if unet is None or type(scheduler).__name__ != "ScoreSdeVeScheduler":
            raise load_error(c.model, f"diffusers loaded a {type(pipe).__name__} without a UNet and a "
                             f"ScoreSdeVeScheduler", VALID_LAYOUT)
        self.model_id, self.scheduler = source, scheduler
        n, lo, hi = schedule_facts(dict(scheduler.config), c.model)
        self.num_train_timesteps = n
        self.prediction_type = "score"
        self.sigmas = ve_sigma_ladder(lo, hi, n)
        self.alphas_cumprod = pz.alphas_cumprod_from_sigmas(self.sigmas).float()
        self._setup_pixels(unet, device)

    def eps_from_output(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The score [B, C, s, s] at sigma_t -> eps = -sigma_t * score, with sigma_t from the float64
        ladder (recovered from the float32 ``ab`` a small sigma would lose ~3e-4 of itself)."""
        sigma = self.sigmas.to(z_t.device)[t].float().reshape(-1, *([1] * (z_t.ndim - 1)))
        return -sigma * out.float()

    @classmethod
    def check_config(cls, c: ScoreSdePriorConfig) -> None:
        """The dtype (``inspect`` checks the model itself)."""
        if c.dtype != "auto":
            resolve_dtype(c.dtype, torch.device("cpu"))

    @classmethod
    def inspect(cls, cfg: Any, prompt) -> dict:
        """The options and the model directory, checked without weights; its start-up facts (empty
        for a hub id that will be downloaded). The prompt is the start-up check's: none allowed."""
        c = parsed_config(cls, cfg, cls.describe())
        path = locate_pipeline(c.model, c.local_files_only, VALID_LAYOUT)
        return {} if path is None else model_facts(path, c.model)

    def validate_prompt(self, prompt) -> None:
        """Nothing to check: the start-up check refuses a prompt for an unconditional prior."""
