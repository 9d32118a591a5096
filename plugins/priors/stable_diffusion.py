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

from scorelift import fast_path
from scorelift.config import parse_config
from scorelift.cuda_graphs import GraphedInference
from scorelift.errors import ConfigError, PriorLoadError
from scorelift.interfaces.prior import DiffusionPrior
from scorelift.registry import register
from scorelift.plugins.priors.resize import resize_bilinear
from scorelift.plugins.priors.text_conditioning import (
    TextPrompts,
    check_prompt_length,
    check_view_templates,
    default_view_templates,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# What a complete pipeline directory must hold (sub-folder -> files, any one of each group).
REQUIRED_PARTS: dict[str, list[tuple[str, ...]]] = {
    "unet": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")],
    "vae": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                               "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")],
    "text_encoder": [("config.json",), ("model.safetensors", "pytorch_model.bin",
                                        "model.fp16.safetensors", "pytorch_model.fp16.bin")],
    "tokenizer": [("vocab.json", "tokenizer.json")],
    "scheduler": [("scheduler_config.json",)],
}

VALID_LAYOUT = (
    "A valid prior is a diffusers StableDiffusionPipeline directory (the save_pretrained layout): "
    "model_index.json plus the sub-folders unet/, vae/, text_encoder/ (each a config.json and weights), "
    "tokenizer/ and scheduler/ (scheduler_config.json). Point `prior.model` at such a directory "
    "(e.g. `prior.model=/path/to/stable-diffusion-2-1-base`), or at a Hugging Face hub id with "
    "`prior.local_files_only=false` on a machine with network access, or pick the offline prior "
    "`prior=tiny-random`."
)


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


def load_error(model: str, reason: str, layout: str = VALID_LAYOUT) -> PriorLoadError:
    """What failed for ``model`` and what a valid directory holds (``layout``: each loader's own)."""
    return PriorLoadError(f"Cannot load the diffusion prior from {model!r}: {reason}. {layout}")


def looks_like_path(model: str) -> bool:
    """True when ``model`` can only be a filesystem path (a hub id is ``name`` or ``org/name``)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def check_pipeline_dir(path: Path, model: str, parts: dict[str, list[tuple[str, ...]]] = REQUIRED_PARTS,
                       layout: str = VALID_LAYOUT) -> None:
    """Raise PriorLoadError naming ``model`` if ``path`` is not a complete pipeline directory: a
    model_index.json and, for each sub-folder of ``parts``, one file of each group of names."""
    if not path.exists():
        raise load_error(model, f"the directory {str(path)!r} does not exist", layout)
    if not path.is_dir():
        raise load_error(model, f"{str(path)!r} is a file, not a directory", layout)
    if not (path / "model_index.json").is_file():
        raise load_error(model, f"{str(path)!r} has no model_index.json", layout)
    for part, groups in parts.items():
        folder = path / part
        if not folder.is_dir():
            raise load_error(model, f"{str(path)!r} has no {part}/ sub-folder", layout)
        for group in groups:
            if not any((folder / name).is_file() for name in group):
                raise load_error(model, f"{str(folder)!r} lacks {' or '.join(group)}", layout)


def dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` where diffusers deprecates ``torch_dtype``
    (0.42 does), else ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # fp16 halves memory and time on GPUs; CPUs have no fast fp16 kernels.
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"prior.dtype={name!r} is not known; use auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def read_json(path: Path, model: str, layout: str = VALID_LAYOUT) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise load_error(model, f"{str(path)!r} is not a readable JSON file ({type(exc).__name__}: {exc})", layout) from None


def check_safetensors(path: Path, model: str, layout: str = VALID_LAYOUT) -> None:
    """A safetensors file whose header promises more bytes than the file holds is a truncated
    download: say so before diffusers fails on it (reads the header only)."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        raise load_error(model, f"{str(path)!r} is not a valid safetensors file (truncated or corrupt)", layout) from None
    if 8 + header_len + end > size:
        raise load_error(
            model, f"{str(path)!r} is truncated ({size} bytes of {8 + header_len + end}); download it again", layout
        )


def locate_pipeline(model: str, local_files_only: bool, layout: str = VALID_LAYOUT) -> Path | None:
    """The local directory ``model`` names (a path, or a hub id's cached snapshot); None for a hub
    id that may be downloaded at load time. PriorLoadError for a hub id that is not cached offline."""
    local = Path(model).expanduser()
    if local.exists() or looks_like_path(model):
        return local
    if not local_files_only:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001  (LocalEntryNotFoundError, a malformed id, ...)
        raise load_error(
            model,
            "it is not a local directory, it is not in the local Hugging Face cache, and nothing is "
            "downloaded (offline: `prior.local_files_only` is true)",
            layout,
        ) from None


def inspect_pipeline(path: Path, model: str) -> dict:
    """Check a pipeline directory without loading weights: layout, readable configs, whole
    safetensors files. Returns its latent_channels, latent_size and pixel_size."""
    check_pipeline_dir(path, model)
    read_json(path / "model_index.json", model)
    unet = read_json(path / "unet" / "config.json", model)
    vae = read_json(path / "vae" / "config.json", model)
    read_json(path / "text_encoder" / "config.json", model)
    read_json(path / "scheduler" / "scheduler_config.json", model)
    for part in ("unet", "vae", "text_encoder"):
        for weights in sorted((path / part).glob("*.safetensors")):
            check_safetensors(weights, model)
    try:
        latent_size = int(unet["sample_size"])
        latent_channels = int(unet["in_channels"])
        pixel_size = latent_size * 2 ** (len(vae["block_out_channels"]) - 1)
    except (KeyError, TypeError, ValueError) as exc:
        raise load_error(model, f"its unet/ or vae/ config.json lacks a usable {exc}") from None
    return {"space": "latent", "conditioning": "text", "has_unconditional": True,
            "latent_channels": latent_channels, "latent_size": latent_size, "pixel_size": pixel_size}


def check_local_pipeline(path: Path, model: str, prompt: str, templates: dict[str, str]) -> dict:
    """``inspect_pipeline`` and the prompt's length against the pipeline's own tokenizer."""
    facts = inspect_pipeline(path, model)
    check_prompt_length(load_tokenizer(path, model), prompt, templates)
    return facts


def load_tokenizer(path: Path, model: str):
    """The pipeline's tokenizer alone (milliseconds), to check prompt lengths before the weights load."""
    import transformers

    index = read_json(path / "model_index.json", model)
    entry = index.get("tokenizer")
    name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else "AutoTokenizer"
    cls = getattr(transformers, str(name), None) or transformers.AutoTokenizer
    try:
        return cls.from_pretrained(str(path / "tokenizer"), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        first_line = (str(exc).splitlines() or [""])[0]
        raise load_error(model, f"its tokenizer/ cannot be loaded ({type(exc).__name__}: {first_line})") from None


@register("prior", "stable-diffusion")
class StableDiffusionPrior(TextPrompts, DiffusionPrior):
    """A frozen Stable-Diffusion-format latent diffusion model.

    Attributes: unet, vae, tokenizer, text_encoder, scheduler (diffusers / transformers objects),
    plus those of DiffusionPrior (latent_channels, latent_size, pixel_size, num_train_timesteps,
    alphas_cumprod [T] fp32 on device, prediction_type, device, dtype), vae_scale_factor,
    vae_shift and vae_scale (the latent normalisation ``(z - shift) * scale``).
    """

    Config = StableDiffusionPriorConfig
    capabilities = frozenset({"trainable_denoiser"})

    def __init__(self, cfg: Any = None, device: torch.device | str = "cpu"):
        super().__init__(cfg)
        self._load(self.cfg.model, self.cfg.local_files_only, torch.device(device))

    @classmethod
    def inspect(cls, cfg: Any, prompt: str) -> dict:
        """Every check of this prior that needs no weights, run before a run writes anything: the
        options, the model directory (layout, configs, whole weight files; a hub id must be cached
        when offline) and ``prompt`` against the tokenizer's limit (with each view's words).
        Returns what the run's render size is checked against: latent_channels, latent_size and
        pixel_size (empty for a hub id that will be downloaded)."""
        c = cls.checked_options(cfg)
        path = locate_pipeline(c.model, c.local_files_only)
        if path is None:
            return {}
        return check_local_pipeline(path, c.model, prompt, c.view_templates)

    @classmethod
    def checked_options(cls, cfg: Any):
        """``cfg`` parsed into ``cls.Config``, with its view templates and dtype checked."""
        c = cfg if isinstance(cfg, cls.Config) else parse_config(cls.Config, cfg, cls.describe())
        check_view_templates(c.view_templates)
        if c.dtype != "auto":
            resolve_dtype(c.dtype, torch.device("cpu"))
        return c

    # ------------------------------------------------------------------ loading
    def _load(self, model: str, local_files_only: bool, device: torch.device) -> None:
        from diffusers import StableDiffusionPipeline

        check_view_templates(self.cfg.view_templates)
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
        on_cuda = fast_path.applies(device)
        self.unet_channels_last = fast_path.enabled()
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
