"""DiffusionPrior: a pretrained 2D diffusion model seen through the few operations guidance needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.interfaces.base import BasePart


@dataclass
class TextConditioning:
    """Text embeddings for one batch of B views.

    cond: [B, L, D] view-dependent prompt embeddings; uncond: [B, L, D] empty-prompt embeddings;
    cond_view_independent: [B, L, D] the prompt without view words (VSD's LoRA model uses it).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    cond_view_independent: torch.Tensor


# Each capability a prior may declare, and the method that provides it (registration checks it).
CAPABILITIES = {"trainable_denoiser": "trainable_denoiser_copy"}


class DiffusionPrior(BasePart):
    """A latent diffusion model (Stable-Diffusion format).

    Attributes set by implementations:
      latent_channels (C), latent_size (h = w of the UNet input), pixel_size (H = W of the VAE
      input), num_train_timesteps (T), alphas_cumprod: [T] float32 on ``device``,
      prediction_type ("epsilon" or "v_prediction"), device, dtype (UNet compute dtype).
    """

    # What this prior can do beyond the required methods; a guidance lists what it needs in
    # ``Guidance.requires`` and the start-up check refuses a pair that does not fit.
    #   "trainable_denoiser": ``trainable_denoiser_copy()`` gives a copy of the UNet to train (VSD's LoRA).
    capabilities: frozenset[str] = frozenset()

    latent_channels: int
    latent_size: int
    pixel_size: int
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor
    prediction_type: str
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def inspect(cls, cfg, prompt: str) -> dict:
        """Start-up facts and checks that need no weights, run before anything is loaded or written.

        ``cfg``: the parsed ``Config``; ``prompt``: the run's prompt (non-empty). Check what can be
        checked without loading the model (its files, the prompt against its tokenizer) and
        return what is known of ``latent_channels``, ``latent_size`` and ``pixel_size`` (the
        start-up check compares the render size and channels with them). Default: nothing known.
        """
        return {}

    def validate_prompt(self, prompt: str) -> None:
        """ConfigError if this (built) prior cannot take ``prompt``; for callers that skip the
        start-up check. Default: any non-empty text (the start-up check's own test)."""
        from scorelift.checks import check_prompt

        check_prompt(prompt)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """N prompts -> [N, L, D] embeddings (cached); "" is the unconditional prompt."""
        raise NotImplementedError

    def condition(self, prompt: str, view_names: list[str]) -> TextConditioning:
        """Embeddings for ``prompt`` seen from B views (view words: front, side, back, overhead)."""
        raise NotImplementedError

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb: [B, 3, H, W] in [0, 1], any H, W (resized to pixel_size) -> [B, C, h, w] normalised
        latents ``(z - shift) * scale``; differentiable with respect to ``rgb``."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] normalised latents -> [B, 3, pixel_size, pixel_size] rgb in [0, 1]."""
        raise NotImplementedError

    def trainable_denoiser_copy(self) -> torch.nn.Module:
        """A deep copy of the denoiser (a diffusers ``UNet2DConditionModel``: ``forward(z_t, t,
        encoder_hidden_states)``) that the caller may train; the prior's own stays frozen. Only
        priors with the "trainable_denoiser" capability implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no trainable denoiser copy (capability 'trainable_denoiser').")

    def predict_eps(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One UNet call on the batch [z_t, z_t] with [cond, uncond], under no_grad.

        z_t: [B, C, h, w]; t: [B] integer timesteps; cond, uncond: [B, L, D].
        Returns (e_c, e_u), each [B, C, h, w] float32; v-prediction is converted to eps.
        """
        raise NotImplementedError
