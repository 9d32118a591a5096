"""Tiny random-weight pixel-space pipelines in the real diffusers formats, for the pixel prior
tests: a DDPMPipeline (unconditional), a class-conditional learned-variance DDPMPipeline with a
DDIM scheduler, and a ScoreSdeVePipeline. Seeded: the same call writes the same weights."""

from __future__ import annotations

from pathlib import Path

import torch

SIZE = 16  # pixels per side of every tiny model


def tiny_unet(seed: int, out_channels: int = 3, attention: bool = True, **extra):
    """A UNet2DModel 3 -> out_channels at SIZE x SIZE, with attention in one down, one up and the
    mid block, or none at all."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    down = ("DownBlock2D", "AttnDownBlock2D") if attention else ("DownBlock2D", "DownBlock2D")
    up = ("AttnUpBlock2D", "UpBlock2D") if attention else ("UpBlock2D", "UpBlock2D")
    return UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=out_channels, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=down, up_block_types=up, attention_head_dim=8, norm_num_groups=8,
        add_attention=attention, **extra,  # add_attention: the mid block's
    )


def build_ddpm(out: Path, seed: int = 0, attention: bool = True) -> Path:
    """An unconditional DDPMPipeline (linear betas, epsilon) at ``out``."""
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    DDPMPipeline(unet=tiny_unet(seed, attention=attention), scheduler=scheduler).save_pretrained(out)
    return Path(out)


def build_class_ddim(out: Path, seed: int = 1, num_classes: int = 4) -> Path:
    """A class-conditional (``num_class_embeds``) DDIMPipeline whose UNet also outputs its variance
    (6 channels, ``variance_type`` learned_range), at ``out``."""
    from diffusers import DDIMPipeline, DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type="epsilon")
    scheduler.register_to_config(variance_type="learned_range")  # DDIM has no such option; DDPM-trained models say it
    unet = tiny_unet(seed, out_channels=6, num_class_embeds=num_classes)
    DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    return Path(out)


def build_score_sde(out: Path, seed: int = 2, n: int = 100, sigma_min: float = 0.01, sigma_max: float = 50.0) -> Path:
    """A ScoreSdeVePipeline (Fourier-time UNet2DModel, ScoreSdeVeScheduler of ``n`` levels) at ``out``."""
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler

    scheduler = ScoreSdeVeScheduler(num_train_timesteps=n, sigma_min=sigma_min, sigma_max=sigma_max)
    unet = tiny_unet(seed, time_embedding_type="fourier")
    ScoreSdeVePipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    return Path(out)
