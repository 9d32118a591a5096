"""DiffusionPrior: a pretrained 2D diffusion model seen through the few operations guidance needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .base import BasePart
from ..maths import parameterisation as pz
from ..prompts import check_prompt

# The facts a prior declares about itself (class attributes, or set when it loads; ``inspect``
# reports them before anything loads so the start-up check can refuse what makes no sense).
SPACES = ("latent", "pixel")  # latent: a VAE maps renders to the denoiser's input; pixel: none
CONDITIONINGS = ("text", "class", "none")  # what the denoiser is conditioned on
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "score")


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, for one batch of B views.

    Text priors: cond [B, L, D] view-dependent prompt embeddings, uncond [B, L, D] empty-prompt
    embeddings, cond_view_independent [B, L, D] the prompt without view words (VSD's LoRA model).
    Class priors: [B] long class labels (uncond: the null class, or None where the model has none).
    Unconditional priors: all three None; ``predict_eps`` then makes one denoiser call and returns
    its eps as both predictions, so no classifier-free guidance applies.
    """

    cond: Optional[torch.Tensor]
    uncond: Optional[torch.Tensor]
    cond_view_independent: Optional[torch.Tensor]

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance applies: a condition and an unconditional branch."""
        return self.cond is not None and self.uncond is not None


TextConditioning = Conditioning  # the name from when every prior was a text-to-image model


# Each capability a prior may declare, and the method that provides it (registration checks it).
CAPABILITIES = {"trainable_denoiser": "trainable_denoiser_copy"}


class DiffusionPrior(BasePart):
    """A pretrained diffusion model: latent or pixel space, conditioned on text, a class or
    nothing, VP or VE, predicting eps, v, the clean sample or the score.

    Attributes set by implementations:
      space ("latent" | "pixel"), conditioning ("text" | "class" | "none"), has_unconditional
      (an unconditional branch for CFG exists: the empty prompt, a null class), parameterisation
      ("vp" | "ve"), prediction_type ("epsilon" | "v_prediction" | "sample" | "score"),
      latent_channels (C: channels of the denoiser's input, 3 for pixel priors), latent_size
      (h = w of the denoiser's input), pixel_size (H = W of the images ``encode_images`` takes;
      equal to latent_size for pixel priors), num_train_timesteps (T), alphas_cumprod: [T]
      float32 on ``device`` (the VP table of the ticks; for a VE model ``1 / (1 + sigma_t^2)``),
      device, dtype (denoiser compute dtype).

    The guidance math is written once, in VP notation at integer ticks; each prior converts
    exactly to and from its own parameterisation inside ``predict_eps`` (framework/maths/parameterisation.py).
    """

    # What this prior can do beyond the required methods; a guidance lists what it needs in
    # ``Guidance.requires`` and the start-up check refuses a pair that does not fit.
    #   "trainable_denoiser": ``trainable_denoiser_copy()`` gives a copy of the UNet to train (VSD's LoRA).
    capabilities: frozenset[str] = frozenset()

    space: str = "latent"
    conditioning: str = "text"
    has_unconditional: bool = True
    parameterisation: str = "vp"
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

        ``cfg``: the parsed ``Config``; ``prompt``: the run's prompt (None or "" for none). Check
        what can be checked without loading the model (its files, the prompt against its
        tokenizer or class names) and return what is known of ``space``, ``conditioning``,
        ``has_unconditional``, ``latent_channels``, ``latent_size`` and ``pixel_size`` (the
        start-up check compares the render kind, size and channels, the prompt and the CFG
        settings with them). Default: the class's declared space and conditioning.
        """
        return {"space": cls.space, "conditioning": cls.conditioning, "has_unconditional": cls.has_unconditional}

    @classmethod
    def declared_vocabulary(cls, cfg) -> dict:
        """The prompts this prior declares it knows, read from its config alone (no weights, no
        tokenizer): {"vocabulary": [prompts], "vocabulary_words": {their words and other words of
        its captions}}, or {} (the default) for a prior that knows any text. The start-up check
        refuses a prompt with another word, unless ``allow_unknown_prompt=true``."""
        return {}

    def validate_prompt(self, prompt: str) -> None:
        """ConfigError if this (built) prior cannot take ``prompt``; for callers that skip the
        start-up check. Default: any non-empty text (the start-up check's own test)."""
        check_prompt(prompt)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text priors: N prompts -> [N, L, D] embeddings (cached); "" is the unconditional prompt.
        Not required of class and unconditional priors (``condition`` is the interface)."""
        raise NotImplementedError

    def condition(self, prompt: str | None, view_names: list[str]) -> Conditioning:
        """The conditioning for ``prompt`` seen from B views (text priors add view words: front,
        side, back, overhead); all None for an unconditional prior."""
        raise NotImplementedError

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb: [B, 3, H, W] in [0, 1], any H, W (resized to pixel_size) -> [B, C, h, w], the
        denoiser's clean input: normalised VAE latents ``(z - shift) * scale`` (latent priors) or
        the pixels in the model's data range, usually [-1, 1] (pixel priors); differentiable with
        respect to ``rgb``."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] denoiser inputs -> [B, 3, pixel_size, pixel_size] rgb in [0, 1] (the VAE
        decoder, or the inverse of the pixel range map)."""
        raise NotImplementedError

    def trainable_denoiser_copy(self) -> torch.nn.Module:
        """A deep copy of the denoiser (a diffusers UNet with attention projections to_q/to_k/
        to_v/to_out.0 and a ``time_embedding``) that the caller may train; the prior's own stays
        frozen. Only priors with the "trainable_denoiser" capability implement it; the copy is
        called through ``denoiser_output`` and its output read with ``eps_from_output``."""
        raise NotImplementedError(f"{type(self).__name__} has no trainable denoiser copy (capability 'trainable_denoiser').")

    def denoiser_output(self, net: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor,
                        cond: torch.Tensor | None) -> torch.Tensor:
        """The raw output of ``net`` (this prior's denoiser or a trainable copy of it), float32
        [B, C, h, w], at the VP point z_t [B, C, h, w] and ticks t [B], conditioned on ``cond``
        (a ``Conditioning`` entry, or None); the prior feeds it its own input (VE: z_t / sqrt(ab),
        sigma for t) and conditioning keyword. With gradient: the caller decides."""
        raise NotImplementedError

    def eps_from_output(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A raw denoiser output [B, C, h, w] at (z_t, t) -> eps [B, C, h, w] float32, by the
        prior's prediction type and parameterisation (framework/maths/parameterisation.py)."""
        ab = self.alphas_cumprod.to(z_t.device)[t].reshape(-1, *([1] * (z_t.ndim - 1)))
        return pz.eps_from_output(out, z_t, ab, self.prediction_type, self.parameterisation)

    def predict_eps(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional and unconditional eps at (z_t, t), under no_grad: one denoiser call on the
        batch [z_t, z_t] with [cond, uncond] where both exist, else one call on z_t alone whose
        eps is returned twice (an unconditional prior, or a condition without a null branch).

        z_t: [B, C, h, w] (VP notation); t: [B] integer ticks; cond, uncond: [B, L, D]
        embeddings, [B] labels or None. Returns (e_c, e_u), each [B, C, h, w] float32, converted
        to eps from whatever the network predicts.
        """
        raise NotImplementedError
