"""The ``stable-diffusion`` prior: any diffusers StableDiffusionPipeline, seen as a DiffusionPrior.

Loads a pipeline directory (``save_pretrained`` layout) or a hub id with
``StableDiffusionPipeline.from_pretrained(model, torch_dtype=..., local_files_only=...)``,
freezes every weight and exposes the few operations guidance needs: text embeddings (cached),
view-dependent conditioning, VAE encode/decode with the ``(z - shift) * scale`` normalisation,
and one classifier-free-guidance UNet call returning eps.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from scorelift import fast_path as fast_paths
from scorelift.interfaces.base import parsed_config
from scorelift.cuda_graphs import GraphedInference
from scorelift.interfaces.prior import DiffusionPrior
from scorelift.registry import register
from scorelift.library.pipelines import (
    check_local_pipeline,
    check_pipeline_dir,
    dtype_keyword,
    load_error,
    locate_pipeline,
    looks_like_path,
    read_vocabulary,
    resolve_dtype,
)
from scorelift.library.text_conditioning import (
    TextPrompts,
    check_view_templates,
    default_view_templates,
)
from scorelift.maths.resize import resize_bilinear

log = logging.getLogger(__name__)

@dataclass(kw_only=True)
class StableDiffusionPriorConfig:
    """Options of the ``stable-diffusion`` prior and their defaults (``prior=stable-diffusion
    prior.<option>=...``)."""

    # Local pipeline directory (diffusers save_pretrained layout) or a Hugging Face hub id.
    model: str = "stabilityai/stable-diffusion-2-1-base"
    # Offline-first: never touch the network; set false to download a hub id.
    local_files_only: bool = True
    # auto: float16 on CUDA, float32 elsewhere; or float32 | float16 | bfloat16.
    dtype: str = "auto"
    # View name (front/side/back/overhead) -> template; {prompt} is the user's prompt. DreamFusion
    # style, as the shapes prior's captions; an empty mapping {} adds no view words. SJC's authors
    # wrote e.g. "front view of {prompt}" / "backside view of {prompt}": set those to reproduce them.
    view_templates: dict[str, str] = field(default_factory=default_view_templates)
    # Directory for on-disk text embeddings (keyed by model and prompt), or null for memory only.
    text_cache_dir: Optional[str] = None


@register("prior", "stable-diffusion")
class StableDiffusionPrior(TextPrompts, DiffusionPrior):
    """A frozen Stable-Diffusion-format latent diffusion model.

    Attributes: unet, vae, tokenizer, text_encoder, scheduler (diffusers / transformers objects),
    plus those of DiffusionPrior (latent_channels, latent_size, pixel_size, num_train_timesteps,
    alphas_cumprod [T] fp32 on device, prediction_type, device, dtype), vae_scale_factor,
    vae_shift and vae_scale (the latent normalisation ``(z - shift) * scale``).
    """

    # one line for `scorelift --list`
    summary = "A Stable-Diffusion-format latent diffusion model (a diffusers folder or hub id; the shapes prior)."

    Config = StableDiffusionPriorConfig
    capabilities = frozenset({"trainable_denoiser"})

    def __init__(self, cfg: Any = None, device: torch.device | str = "cpu", fast_path: bool = True):
        super().__init__(cfg)
        self._load(self.cfg.model, self.cfg.local_files_only, torch.device(device), fast_path)

    @classmethod
    def inspect(cls, cfg: Any, prompt: str) -> dict:
        """Every check of this prior that needs no weights, run before a run writes anything: the
        options, the model directory (layout, configs, whole weight files; a hub id must be cached
        when offline) and ``prompt`` against the tokenizer's limit (with each view's words).
        Returns what the run's render size is checked against: latent_channels, latent_size and
        pixel_size (empty for a hub id that will be downloaded)."""
        c = parsed_config(cls, cfg, cls.describe())
        path = locate_pipeline(c.model, c.local_files_only)
        if path is None:
            return {}
        return check_local_pipeline(path, c.model, prompt, c.view_templates)

    @classmethod
    def declared_vocabulary(cls, cfg: Any) -> dict:
        """The prompts the pipeline folder declares it knows (its ``vocabulary.json``; {} for none
        or a hub id), read before its tokenizer so that an unknown prompt is refused at once."""
        c = parsed_config(cls, cfg, cls.describe())
        path = locate_pipeline(c.model, c.local_files_only)
        return {} if path is None else read_vocabulary(path, c.model)

    @classmethod
    def check_config(cls, c) -> None:
        """The view templates and the dtype (``inspect`` checks the model itself)."""
        check_view_templates(c.view_templates)
        if c.dtype != "auto":
            resolve_dtype(c.dtype, torch.device("cpu"))

    # ------------------------------------------------------------------ loading
    def _load(self, model: str, local_files_only: bool, device: torch.device, fast_path: bool = True) -> None:
        from diffusers import StableDiffusionPipeline

        self.device = device
        self.dtype = resolve_dtype(self.cfg.dtype, device)
        local = Path(model).expanduser()
        if local.exists() or looks_like_path(model):
            check_pipeline_dir(local, model)
            source = str(local.resolve())
        else:
            source = model
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                source,
                **{dtype_keyword(): self.dtype},
                local_files_only=local_files_only,
                # The safety checker is a 1 GB image classifier that guidance never calls.
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        except Exception as exc:  # from_pretrained raises OSError, ValueError, EnvironmentError...
            hint = " (offline: `prior.local_files_only` is true)" if local_files_only and source == model else ""
            first_line = (str(exc).splitlines() or [""])[0]
            raise load_error(model, f"diffusers failed with {type(exc).__name__}: {first_line}{hint}") from exc
        self.model_id = source
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoder, self.tokenizer, self.scheduler = pipe.text_encoder, pipe.tokenizer, pipe.scheduler
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
            module.eval()
            module.requires_grad_(False)
        # The fast path (scorelift.fast_path). On CUDA: NHWC convolutions in the UNet and the VAE, and
        # the frozen UNet's forward replayed as a CUDA graph (the same kernels, one launch instead of
        # hundreds). On the CPU: the UNet's convolutions in NHWC, which oneDNN runs 13 % faster
        # (the shapes prior, batch 8); the VAE's gain nothing there and stay NCHW.
        on_cuda = fast_paths.applies(fast_path, device)
        self.unet_channels_last = fast_path
        self.vae_channels_last = on_cuda
        if self.unet_channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if self.vae_channels_last:
            self.vae.to(memory_format=torch.channels_last)
        self._eps_model = GraphedInference(self._unet_forward, "UNet forward") if on_cuda else self._unet_forward

        sched = self.scheduler.config
        self.num_train_timesteps = int(sched.num_train_timesteps)
        self.prediction_type = str(getattr(sched, "prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise load_error(
                model, f"its scheduler predicts {self.prediction_type!r}; only epsilon, v_prediction and sample are supported"
            )
        ab = getattr(self.scheduler, "alphas_cumprod", None)
        if ab is None:
            ab = torch.cumprod(1.0 - torch.as_tensor(self.scheduler.betas, dtype=torch.float64), 0)
        self.alphas_cumprod = torch.as_tensor(ab).to(device=device, dtype=torch.float32)

        self.latent_channels = int(self.unet.config.in_channels)
        self.latent_size = int(self.unet.config.sample_size)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.pixel_size = self.latent_size * self.vae_scale_factor
        # SD 1.x/2.x have no shift (None); the shapes prior stores one so latents have zero mean.
        self.vae_scale = float(getattr(self.vae.config, "scaling_factor", None) or 1.0)
        self.vae_shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self.text_attention_mask = bool(getattr(self.text_encoder.config, "use_attention_mask", False))
        self.init_text_cache(local if local.exists() else None, source)

    # ------------------------------------------------------------------ images
    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb: [B, 3, H, W] in [0, 1] -> [B, C, h, w] float32 latents ``(z - shift) * scale``.

        Resized bilinearly to pixel_size, mapped to [-1, 1], encoded with gradient flowing to
        ``rgb`` (the VAE's weights are frozen). We take the posterior *mean*, not a sample: the
        interface has no generator to draw from (a sample would make runs non-reproducible), and
        the posterior std of SD-style VAEs is tiny next to the latents, so the mean is the
        same target with less gradient noise.
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"encode_images expects [B, 3, H, W] RGB, got shape {tuple(rgb.shape)}.")
        x = rgb.float()
        if x.shape[-2:] != (self.pixel_size, self.pixel_size):
            x = resize_bilinear(x, (self.pixel_size, self.pixel_size))
        x = self._layout((2.0 * x - 1.0).to(self.vae.dtype), self.vae_channels_last)
        z = self.vae.encode(x).latent_dist.mean.float()
        return (z - self.vae_shift) * self.vae_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] normalised latents -> [B, 3, pixel_size, pixel_size] float32 RGB in [0, 1]."""
        z = latents.float() / self.vae_scale + self.vae_shift
        x = self.vae.decode(self._layout(z.to(self.vae.dtype), self.vae_channels_last)).sample.float()
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ UNet
    def trainable_denoiser_copy(self) -> torch.nn.Module:
        """A deep copy of the frozen UNet (still frozen: the caller picks what to train)."""
        return copy.deepcopy(self.unet)

    def denoiser_output(self, net: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``net`` (the UNet or a copy) at latents z_t [B, C, h, w], ticks t [B] and text
        embeddings cond [B, L, D] -> its raw prediction, float32 [B, C, h, w]."""
        return net(z_t.to(net.dtype), t, encoder_hidden_states=cond.to(net.dtype)).sample.float()

    def _unet_forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [N, C, h, w], t: [N] long, emb: [N, L, D], all on the device in the UNet's dtype -> [N, C, h, w]."""
        return self.unet(x, t, encoder_hidden_states=emb).sample

    @staticmethod
    def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """[N, C, h, w] in the layout of the network it goes into (channels-last on the fast path)."""
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    @torch.no_grad()
    def predict_eps(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One UNet call on [z_t, z_t] with [cond, uncond] (this order), under no_grad.

        z_t: [B, C, h, w]; t: [B] integer timesteps; cond, uncond: [B, L, D].
        Returns (e_c, e_u), each [B, C, h, w] float32; v and sample predictions are converted to
        eps (``eps_from_output``; for v, ``eps = sqrt(ab) v + sqrt(1 - ab) z_t``).
        """
        B = z_t.shape[0]
        t = t.to(self.device).long().reshape(B)
        x = torch.cat([z_t, z_t]).to(device=self.device, dtype=self.unet.dtype)
        emb = torch.cat([cond, uncond]).to(device=self.device, dtype=self.unet.dtype)
        out = self._eps_model(self._layout(x, self.unet_channels_last), torch.cat([t, t]), emb).float()
        if self.prediction_type != "epsilon":
            z32 = torch.cat([z_t, z_t]).to(device=self.device, dtype=torch.float32)  # not the fp16 copy
            out = self.eps_from_output(out, z32, torch.cat([t, t]))
        e_c, e_u = out.chunk(2)
        return e_c, e_u
