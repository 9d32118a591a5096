"""The ``tiny-random`` prior: a random-weight, Stable-Diffusion-shaped pipeline for offline runs.

A placeholder default until the trained shapes prior lands, and the model of the test suite.
``build_tiny_pipeline`` writes a real diffusers pipeline (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a CLIPTokenizer over the shapes world's words, SD's scheduler) in the
``save_pretrained`` layout; the prior builds one once, caches it under ``cache_dir`` keyed by its
settings, and loads it exactly like ``stable-diffusion``. Its weights are random: the guidance
it gives points nowhere in particular and its outputs mean nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from scorelift.errors import ConfigError
from scorelift.interfaces.base import BasePart, parsed_config
from scorelift.registry import register
from scorelift.library.bpe_vocabulary import build_clip_tokenizer
from scorelift.library.pipelines import check_local_pipeline
from .stable_diffusion import StableDiffusionPrior
from scorelift.library.text_conditioning import default_view_templates

log = logging.getLogger(__name__)

# Bump when build_tiny_pipeline changes what it writes, so old cached pipelines are not reused.
FORMAT_VERSION = 1

SHAPES_WORLD_WORDS: tuple[str, ...] = (
    "a", "an", "red", "green", "blue", "yellow", "purple", "orange",
    "sphere", "cube", "cylinder", "cone", "torus", "pyramid",
    "front", "side", "back", "backside", "overhead", "view", "of",
)  # fmt: skip

# SD 1.x/2.x noise schedule: scaled-linear betas 0.00085 .. 0.012 over 1000 steps.
SD_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)  # fmt: skip


def build_tiny_pipeline(
    out_dir: str | Path,
    *,
    latent_size: int = 16,
    vae_blocks: int = 3,
    unet_channels: Sequence[int] = (32, 64),
    text_hidden: int = 32,
    text_layers: int = 2,
    max_length: int = 77,
    seed: int = 0,
    prediction_type: str = "epsilon",
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    words: Sequence[str] = SHAPES_WORLD_WORDS,
) -> Path:
    """Write a random-weight StableDiffusionPipeline to ``out_dir`` and return ``out_dir``.

    Latents: 4 x latent_size^2; pixels: latent_size * 2^(vae_blocks - 1). The UNet has one
    cross-attention down/up block per entry of ``unet_channels`` but the last, so a call on a
    16 x 16 latent takes milliseconds on a CPU. Weights come from ``seed`` (the global RNG is
    left untouched).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_unet = len(unet_channels)
    with tempfile.TemporaryDirectory() as tok_dir, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_clip_tokenizer(list(words), tok_dir, model_max_length=max_length)
        unet = UNet2DConditionModel(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=tuple(unet_channels),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
            cross_attention_dim=text_hidden,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae_channels = tuple(min(16 * 2**i, 64) for i in range(vae_blocks))
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * vae_blocks,
            up_block_types=("UpDecoderBlock2D",) * vae_blocks,
            block_out_channels=vae_channels,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=latent_size * 2 ** (vae_blocks - 1),
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_hidden,
                intermediate_size=2 * text_hidden,
                num_hidden_layers=text_layers,
                num_attention_heads=4,
                max_position_embeddings=max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        scheduler = DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction_type)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(out), safe_serialization=True)
    return out


@dataclass(kw_only=True)
class TinyRandomPriorConfig:
    """Options of the ``tiny-random`` prior and their defaults (``prior=tiny-random
    prior.<option>=...``): a RANDOM-WEIGHT Stable-Diffusion-format pipeline that runs offline in
    milliseconds per step; its guidance means nothing.

    latent_size .. prediction_type are passed to ``build_tiny_pipeline``; dtype, view_templates
    and text_cache_dir are as for ``stable-diffusion``.
    """

    latent_size: int = 16  # latents 4 x 16 x 16
    vae_blocks: int = 3  # pixels = latent_size * 2^(vae_blocks - 1) = 64
    unet_channels: list[int] = field(default_factory=lambda: [32, 64])
    text_hidden: int = 32
    text_layers: int = 2
    seed: int = 0  # weight initialisation
    prediction_type: str = "epsilon"  # or v_prediction
    # Where built pipelines are kept: built once per distinct setting, reused afterwards.
    cache_dir: str = "~/.cache/scorelift"
    dtype: str = "auto"
    view_templates: dict[str, str] = field(default_factory=default_view_templates)
    text_cache_dir: Optional[str] = None


def tiny_pipeline_location(cache_dir: str | Path, **settings) -> tuple[str, Path]:
    """(the settings key text, the directory) of the cached tiny pipeline with ``settings``."""
    key_src = json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True, default=list)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    return key_src, Path(cache_dir).expanduser() / f"tiny-random-{key}"


def pipeline_settings(c: TinyRandomPriorConfig) -> dict:
    """The build_tiny_pipeline settings a config asks for (they also key its cache directory)."""
    return dict(
        latent_size=c.latent_size, vae_blocks=c.vae_blocks, unet_channels=list(c.unet_channels),
        text_hidden=c.text_hidden, text_layers=c.text_layers, seed=c.seed, prediction_type=c.prediction_type,
    )


def cached_tiny_pipeline(cache_dir: str | Path, **settings) -> Path:
    """The directory of a tiny pipeline with ``settings``, built on first use.

    Built into a temporary sibling and renamed into place, so concurrent runs never see a half
    written pipeline (the loser of a race discards its copy).
    """
    key_src, final = tiny_pipeline_location(cache_dir, **settings)
    key = final.name.removeprefix("tiny-random-")
    root = final.parent
    if (final / "model_index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tiny-random-{key}-", dir=root))
    log.info("Building the tiny random pipeline %s (once)", final)
    try:
        build_tiny_pipeline(tmp, **settings)
        (tmp / "scorelift_settings.json").write_text(key_src)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "model_index.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@register("prior", "tiny-random")
class TinyRandomPrior(StableDiffusionPrior):
    """A random-weight SD-format prior (see the module docstring); loads like stable-diffusion."""

    # one line for `scorelift --list`
    summary = "A random-weight SD-format model built on the spot, for tests and smoke runs."

    Config = TinyRandomPriorConfig

    @classmethod
    def check_config(cls, c) -> None:
        """stable-diffusion's checks, and the sizes and prediction type of the pipeline to build."""
        super().check_config(c)
        for key in ("latent_size", "vae_blocks", "text_hidden", "text_layers"):
            if getattr(c, key) < 1:
                raise ConfigError(f"prior.{key}={getattr(c, key)} must be a positive number.")
        if c.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prior.prediction_type={c.prediction_type!r} must be epsilon or v_prediction.")

    @classmethod
    def declared_vocabulary(cls, cfg) -> dict:
        """None: random weights know no prompt in particular (any text is taken)."""
        return {}

    @classmethod
    def inspect(cls, cfg: Any, prompt: str) -> dict:
        """As stable-diffusion's, on the cached pipeline (built here on first use: a few seconds,
        into the cache directory, never into a run directory)."""
        c = parsed_config(cls, cfg, cls.describe())
        path = cached_tiny_pipeline(c.cache_dir, **pipeline_settings(c))
        return check_local_pipeline(path, str(path), prompt, c.view_templates)

    def __init__(self, cfg: Any = None, device: torch.device | str = "cpu", fast_path: bool = True):
        BasePart.__init__(self, cfg)  # parse our own Config; the loading is the parent's
        c = self.cfg
        path = cached_tiny_pipeline(c.cache_dir, **pipeline_settings(c))
        message = (
            f"prior=tiny-random has RANDOM weights ({path}): its guidance is noise and anything it "
            f"produces means nothing. It exists so the pipeline runs offline; use the shapes prior "
            f"or prior=stable-diffusion for real results."
        )
        # warnings (not logging too): shown once per process and catchable in tests, no double print.
        warnings.warn(message, UserWarning, stacklevel=2)
        self._load(str(path), True, torch.device(device), fast_path)
