"""What the pixel-space priors share (``diffusers-unet``, ``score-sde``, ``deepfloyd-if``): no VAE,
renders go to the denoiser at its own resolution in its data range; checks of a pipeline
directory without weights; and the output of one denoiser call turned into eps by the prior's
parameterisation (framework/maths/parameterisation.py).

A pixel prior's "latents" are the images themselves, mapped from [0, 1] to the model's data
range ([-1, 1] for DDPM-family models, [0, 1] for score-SDE ones): ``latent_channels`` is 3 and
``latent_size`` equals ``pixel_size``. Conditioning: class labels [B] (``class_labels=`` of a
``UNet2DModel``) or none; the text prior overrides ``denoiser_output`` and ``condition``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..interfaces.prior import Conditioning, DiffusionPrior
from ..maths import parameterisation as pz
from ..maths.resize import resize_bilinear
from .pipelines import check_pipeline_dir, check_safetensors, dtype_keyword, load_error, looks_like_path

log = logging.getLogger(__name__)

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
TEXT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin",
                     "model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_weights(folder: Path, model: str, layout: str) -> None:
    """Every safetensors file in ``folder`` is whole (reads the headers only)."""
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights, model, layout)


def learned_variance(variance_type: str | None) -> bool:
    """Whether a scheduler's ``variance_type`` makes the network output [eps, variance] (2C channels)."""
    return str(variance_type or "") in ("learned", "learned_range")


class PixelDenoiserPrior(DiffusionPrior):
    """A frozen pixel-space diffusion model (a diffusers UNet2DModel or UNet2DConditionModel and
    its scheduler). Subclasses load ``unet`` and set the schedule facts, then call
    ``_setup_pixels``.

    Attributes beyond DiffusionPrior's: unet, scheduler, data_range (lo, hi) of the model's
    pixels, eps_channels (the leading output channels that are the prediction; learned-variance
    models output twice as many), null_class (the label of the unconditional class, or None).
    """

    space = "pixel"
    data_range: tuple[float, float] = (-1.0, 1.0)
    null_class: int | None = None

    def _setup_pixels(self, unet: torch.nn.Module, device: torch.device) -> None:
        """Freeze ``unet`` on ``device`` and read its input size and channels."""
        self.unet, self.device = unet, device
        unet.to(device)
        unet.eval()
        unet.requires_grad_(False)
        self.latent_channels = int(unet.config.in_channels)
        self.latent_size = self.pixel_size = int(unet.config.sample_size)
        self.eps_channels = self.latent_channels
        self.alphas_cumprod = self.alphas_cumprod.to(device=device, dtype=torch.float32)

    # ------------------------------------------------------------------ images
    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb [B, 3, H, W] in [0, 1] -> [B, 3, pixel_size, pixel_size] float32 in ``data_range``
        (bilinear resize when the render is another size; differentiable)."""
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"encode_images expects [B, 3, H, W] RGB, got shape {tuple(rgb.shape)}.")
        x = rgb.float()
        if x.shape[-2:] != (self.pixel_size, self.pixel_size):
            x = resize_bilinear(x, (self.pixel_size, self.pixel_size))
        lo, hi = self.data_range
        return lo + (hi - lo) * x

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 3, s, s] model pixels -> [B, 3, s, s] float32 RGB in [0, 1]."""
        lo, hi = self.data_range
        return ((latents.float() - lo) / (hi - lo)).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ denoiser
    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network takes as its time for ticks t [B]: the tick itself (VP models) or
        sigma_t (VE models: a UNet2DModel with Fourier features embeds log sigma)."""
        if self.parameterisation == "ve":
            return self.sigmas.to(t.device)[t].float()
        return t

    def trainable_denoiser_copy(self) -> torch.nn.Module:
        """A deep copy of the frozen UNet (still frozen: the caller picks what to train)."""
        return copy.deepcopy(self.unet)

    def denoiser_output(self, net: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor,
                        cond: torch.Tensor | None) -> torch.Tensor:
        """``net`` at the VP point z_t [B, C, s, s], ticks t [B] and class labels cond [B] (or None)
        -> its prediction channels, float32 [B, C, s, s] (a learned variance is dropped)."""
        ab = self.alphas_cumprod.to(z_t.device)[t].reshape(-1, 1, 1, 1)
        x = pz.model_input(z_t.float(), ab, self.parameterisation).to(net.dtype)
        extra = {} if cond is None else {"class_labels": cond}
        out = net(x, self.model_time(t), **extra).sample.float()
        return out[:, : self.eps_channels]

    @torch.no_grad()
    def predict_eps(self, z_t: torch.Tensor, t: torch.Tensor, cond, uncond) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_c, e_u) [B, C, s, s] float32: one call on [z_t, z_t] with [cond, uncond] where both
        exist, else one call on z_t whose eps is returned as both (no CFG: unconditional prior,
        or a class prior without a null class)."""
        B = z_t.shape[0]
        t = t.to(self.device).long().reshape(B)
        z = z_t.to(device=self.device, dtype=torch.float32)
        if cond is not None and uncond is not None:
            zz, tt = torch.cat([z, z]), torch.cat([t, t])
            both = self._cat_conditions(cond, uncond)
            return self.eps_from_output(self.denoiser_output(self.unet, zz, tt, both), zz, tt).chunk(2)
        eps = self.eps_from_output(self.denoiser_output(self.unet, z, t, cond), z, t)
        return eps, eps

    def _cat_conditions(self, cond, uncond):
        """The batch of conditions for [z_t, z_t]: labels or embeddings stacked along the batch."""
        return torch.cat([cond.to(self.device), uncond.to(self.device)])

    # ------------------------------------------------------------------ conditioning
    def condition(self, prompt: str | None, view_names: list[str]) -> Conditioning:
        """Class priors: the prompt's class label for every view (uncond: the null class, if the
        model has one); unconditional priors: nothing. View words do not apply to either."""
        if self.conditioning == "none":
            return Conditioning(None, None, None)
        label = torch.full((len(view_names),), self.class_index(prompt), dtype=torch.long, device=self.device)
        null = None if self.null_class is None else torch.full_like(label, self.null_class)
        return Conditioning(label, null, label)

    def class_index(self, prompt: str | None) -> int:
        """The class label the prompt names (class priors)."""
        raise NotImplementedError(f"{type(self).__name__} is not class-conditioned.")


def class_index_of(prompt: Any, class_names: list[str], num_classes: int, key: str = "prompt") -> int:
    """The label a class prior's prompt names: one of ``class_names`` (case and surrounding space
    ignored) or a whole number below ``num_classes``; ConfigError naming what is allowed."""
    text = "" if prompt is None else str(prompt).strip()
    names = [n.strip().lower() for n in class_names]
    if text.lower() in names:
        return names.index(text.lower())
    if text.isdigit() and int(text) < num_classes:
        return int(text)
    allowed = f"one of {', '.join(repr(n) for n in class_names)} or" if class_names else ""
    raise ConfigError(
        f"{key}={prompt!r} names no class of this class-conditional prior; use {allowed} a class index "
        f"0..{num_classes - 1} (the model has {num_classes} classes; prior.class_names maps names to them)."
    )


def load_diffusers_pipeline(source: str, dtype: torch.dtype, local_files_only: bool, model: str, layout: str,
                            **kwargs):
    """``DiffusionPipeline.from_pretrained`` (the class named in model_index.json), errors rewritten
    as PriorLoadError naming the model and the valid layout."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(
            source, **{dtype_keyword(): dtype}, local_files_only=local_files_only, **kwargs
        )
    except Exception as exc:  # from_pretrained raises OSError, ValueError, EnvironmentError...
        hint = " (offline: `prior.local_files_only` is true)" if local_files_only and source == model else ""
        first_line = (str(exc).splitlines() or [""])[0]
        raise load_error(model, f"diffusers failed with {type(exc).__name__}: {first_line}{hint}", layout) from exc


def pipeline_source(model: str, parts: dict, layout: str) -> tuple[str, Path | None]:
    """(what to pass to from_pretrained, the local directory or None): a local path is checked
    for ``parts`` first, so a missing or incomplete directory is named before diffusers is asked."""
    local = Path(model).expanduser()
    if local.exists() or looks_like_path(model):
        check_pipeline_dir(local, model, parts, layout)
        return str(local.resolve()), local
    return model, None
