"""The ``deepfloyd-if`` prior: DeepFloyd IF stage I (a diffusers ``IFPipeline``), seen as a DiffusionPrior.

IF-I is a pixel-space text-to-image model: a UNet2DConditionModel on 64 x 64 RGB in [-1, 1]
conditioned on T5 embeddings [B, 77, 4096], trained with a cosine VP schedule; it outputs 6
channels, eps and a learned variance (the scheduler's ``variance_type: learned_range``), of
which guidance reads the first 3. Only stage I is a prior here: stages II and III are
super-resolution models conditioned on a low-resolution image, not score models of images.

Loads a pipeline directory (``save_pretrained`` layout) or a cached hub id offline, without the
safety checker, feature extractor and watermarker (never called by guidance), and freezes every
weight. Prompts go to T5 as ``IFPipeline.encode_prompt`` sends them: lower-cased, padded to 77
tokens, with the attention mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from scorelift.interfaces.base import parsed_config
from scorelift.interfaces.prior import DiffusionPrior
from scorelift.maths import parameterisation as pz
from scorelift.library.pixel_prior import (
    TEXT_WEIGHT_FILES,
    WEIGHT_FILES,
    PixelDenoiserPrior,
    check_weights,
    learned_variance,
    load_diffusers_pipeline,
    pipeline_source,
)
from scorelift.library.pipelines import check_pipeline_dir, load_error, locate_pipeline, read_json, resolve_dtype
from scorelift.library.text_conditioning import (
    TextPrompts,
    check_view_templates,
    default_view_templates,
    prompt_length_error,
)
from scorelift.registry import register

log = logging.getLogger(__name__)

# The prompt length IF's T5 encoder was trained with: IFPipeline.encode_prompt pads and truncates
# to 77 tokens whatever the tokenizer's own model_max_length says (T5 itself has no limit).
TEXT_MAX_LENGTH = 77

# What a stage-I directory must hold (sub-folder -> files, any one of each group). T5-XXL comes
# sharded (an index file and model-0000k-of-0000n shards), in full precision or as the fp16 variant.
REQUIRED_PARTS: dict[str, list[tuple[str, ...]]] = {
    "unet": [("config.json",), WEIGHT_FILES],
    "text_encoder": [("config.json",), TEXT_WEIGHT_FILES + ("model.safetensors.index.fp16.json",
                                                            "pytorch_model.bin.index.fp16.json")],
    "tokenizer": [("spiece.model", "tokenizer.json")],
    "scheduler": [("scheduler_config.json",)],
}
WEIGHTED_PARTS = ("unet", "text_encoder")

VALID_LAYOUT = (
    "A valid deepfloyd-if prior is a diffusers IFPipeline directory of DeepFloyd IF's stage I (the "
    "save_pretrained layout, as on the hub): model_index.json plus unet/ (the 64 x 64 pixel UNet2DConditionModel: "
    "config.json and weights), text_encoder/ (the T5 encoder: config.json and weights, possibly sharded), "
    "tokenizer/ (spiece.model or tokenizer.json) and scheduler/ (scheduler_config.json); safety_checker/, "
    "feature_extractor/ and watermarker/ are not needed. Point `prior.model` at such a directory (e.g. "
    "`prior.model=/path/to/IF-I-XL-v1.0`), or at a hub id (DeepFloyd/IF-I-XL-v1.0, whose licence must be "
    "accepted on the hub first) with `prior.local_files_only=false` on a machine with network access; or pick "
    "another prior (`prior=stable-diffusion`, or `prior=tiny-random` offline)."
)

# Components of an IFPipeline that guidance never calls; passed as None so they are neither
# required nor loaded (the safety checker alone is a 1 GB CLIP model).
UNUSED_COMPONENTS = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)


@dataclass(kw_only=True)
class DeepFloydIFPriorConfig:
    """Options of the ``deepfloyd-if`` prior and their defaults (``prior=deepfloyd-if
    prior.<option>=...``)."""

    # Local IFPipeline stage-I directory (diffusers save_pretrained layout) or a Hugging Face hub id
    # (IF-I-XL 4.3B; IF-I-L-v1.0 900M and IF-I-M-v1.0 400M have the same layout).
    model: str = "DeepFloyd/IF-I-XL-v1.0"
    # Offline-first: never touch the network; set false to download a hub id (licence accepted first).
    local_files_only: bool = True
    # auto: float16 on CUDA, float32 elsewhere; or float32 | float16 | bfloat16.
    dtype: str = "auto"
    # View name (front/side/back/overhead) -> template; {prompt} is the user's prompt. DreamFusion
    # style; an empty mapping {} adds no view words. Prompts are lower-cased for T5, as IF does.
    view_templates: dict[str, str] = field(default_factory=default_view_templates)
    # Directory for on-disk text embeddings (keyed by model and prompt), or null for memory only.
    text_cache_dir: Optional[str] = None


def if_text(text: str) -> str:
    """``text`` as IF's T5 reads it: lower-cased and stripped (IFPipeline's preprocessing without
    caption cleaning; T5's vocabulary is case-sensitive and IF lower-cases every caption)."""
    return text.lower().strip()


def check_if_prompt_length(tokenizer, prompt: str, templates: dict[str, str]) -> None:
    """ConfigError if ``prompt`` alone or with any view's words is longer, as T5 reads it
    (``if_text``), than the tokenizer's limit (``TEXT_MAX_LENGTH`` once loaded here)."""
    limit = int(tokenizer.model_max_length)
    for view, template in [(None, None), *templates.items()]:
        text = prompt if template is None else template.format(prompt=prompt)
        n = len(tokenizer(if_text(text), truncation=False).input_ids)
        if n > limit:
            raise prompt_length_error(prompt, n, limit, view, template)


def load_if_tokenizer(path: Path, model: str):
    """The pipeline's T5 tokenizer alone (milliseconds, no weights), limited to IF's 77 tokens."""
    import transformers

    index = read_json(path / "model_index.json", model, VALID_LAYOUT)
    entry = index.get("tokenizer")
    name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else "AutoTokenizer"
    cls = getattr(transformers, str(name), None) or transformers.AutoTokenizer
    try:
        tokenizer = cls.from_pretrained(str(path / "tokenizer"), local_files_only=True)
    except Exception as exc:  # noqa: BLE001  (a missing sentencepiece package, a corrupt file, ...)
        first_line = (str(exc).splitlines() or [""])[0]
        raise load_error(model, f"its tokenizer/ cannot be loaded ({type(exc).__name__}: {first_line})",
                         VALID_LAYOUT) from None
    tokenizer.model_max_length = TEXT_MAX_LENGTH
    return tokenizer


def model_facts(path: Path, model: str) -> dict:
    """Check a stage-I directory without loading weights (layout, the pipeline class, readable
    configs, whole safetensors files, the scheduler's prediction, the UNet's channels) and return
    its start-up facts."""
    check_pipeline_dir(path, model, REQUIRED_PARTS, VALID_LAYOUT)
    index = read_json(path / "model_index.json", model, VALID_LAYOUT)
    unet = read_json(path / "unet" / "config.json", model, VALID_LAYOUT)
    sched = read_json(path / "scheduler" / "scheduler_config.json", model, VALID_LAYOUT)
    read_json(path / "text_encoder" / "config.json", model, VALID_LAYOUT)
    for part in WEIGHTED_PARTS:
        check_weights(path / part, model, VALID_LAYOUT)
    pipeline = index.get("_class_name")
    if pipeline != "IFPipeline":
        stage = (" (a super-resolution stage II or III, conditioned on a low-resolution image)"
                 if pipeline == "IFSuperResolutionPipeline" else "")
        raise load_error(model, f"its model_index.json names the pipeline {pipeline!r}{stage}, not IF's stage I "
                         f"'IFPipeline'", VALID_LAYOUT)
    prediction = str(sched.get("prediction_type", "epsilon"))
    if prediction not in pz.VALID["vp"]:
        raise load_error(model, f"its scheduler predicts {prediction!r}; supported: {', '.join(pz.VALID['vp'])}",
                         VALID_LAYOUT)
    try:
        channels, size = int(unet["in_channels"]), int(unet["sample_size"])
        out_channels = int(unet.get("out_channels", channels))
    except (KeyError, TypeError, ValueError) as exc:
        raise load_error(model, f"its unet/config.json lacks a usable {exc}", VALID_LAYOUT) from None
    if channels != 3:
        raise load_error(model, f"its UNet takes {channels} channels; a pixel prior takes RGB (3)", VALID_LAYOUT)
    if out_channels not in (channels, 2 * channels):
        raise load_error(
            model, f"its UNet outputs {out_channels} channels for {channels} in; a prediction has {channels} "
            f"channels, or {2 * channels} with a learned variance", VALID_LAYOUT)
    variance = sched.get("variance_type")
    if learned_variance(variance) and out_channels != 2 * channels:
        raise load_error(
            model, f"its scheduler's variance_type {variance!r} means a learned variance, but its UNet outputs "
            f"{out_channels} channels, not {2 * channels}", VALID_LAYOUT)
    return {"space": "pixel", "conditioning": "text", "has_unconditional": True,
            "latent_channels": channels, "latent_size": size, "pixel_size": size}


def weights_variant(path: Path) -> str | None:
    """"fp16" when a weighted part of ``path`` holds only fp16-variant files (the hub's
    ``variant="fp16"`` download: diffusers finds them only when asked for the variant, and takes
    the full-precision files of the other parts then); else None (the full-precision files)."""
    def weight_names(folder: Path) -> list[str]:
        return [f.name for f in folder.glob("*") if f.suffix in (".safetensors", ".bin") or ".index" in f.name]

    for part in WEIGHTED_PARTS:
        names = weight_names(path / part)
        if names and all("fp16" in n for n in names):
            return "fp16"
    return None


@register("prior", "deepfloyd-if")
class DeepFloydIFPrior(TextPrompts, PixelDenoiserPrior):
    """A frozen DeepFloyd IF stage-I model (pixel space, text-conditioned, VP, eps with a learned
    variance dropped).

    TextPrompts comes first so that its ``condition``, ``encode_text`` and ``validate_prompt``
    (view words, cached T5 embeddings) take precedence over the class-label ones of
    PixelDenoiserPrior. Attributes: those of PixelDenoiserPrior (unet, scheduler, data_range
    (-1, 1), eps_channels 3, latent_channels 3, latent_size = pixel_size 64 for IF-I,
    alphas_cumprod [T] fp32 on device, ...), tokenizer and text_encoder (T5), model_id.
    """

    # one line for `scorelift --list`
    summary = "DeepFloyd IF stage I, a pixel-space text-to-image model."

    Config = DeepFloydIFPriorConfig
    capabilities = frozenset({"trainable_denoiser"})
    space = "pixel"
    conditioning = "text"
    has_unconditional = True  # the empty prompt (IF was trained with 10 % of captions dropped)
    parameterisation = "vp"
    data_range = (-1.0, 1.0)
    text_attention_mask = True  # IFPipeline calls T5 with the tokenizer's attention mask

    def __init__(self, cfg: Any = None, device: torch.device | str = "cpu"):
        super().__init__(cfg)
        c = self.cfg
        device = torch.device(device)
        source, local = pipeline_source(c.model, REQUIRED_PARTS, VALID_LAYOUT)
        # A hub id offline: its cached snapshot (PriorLoadError naming local_files_only if there is none).
        files = local if local is not None else locate_pipeline(c.model, c.local_files_only, VALID_LAYOUT)
        if files is not None:
            model_facts(files, c.model)  # named errors before diffusers is asked
        variant = weights_variant(files) if files is not None else None
        self.dtype = resolve_dtype(c.dtype, device)
        pipe = load_diffusers_pipeline(source, self.dtype, c.local_files_only, c.model, VALID_LAYOUT,
                                       **UNUSED_COMPONENTS, **({"variant": variant} if variant else {}))
        if type(pipe).__name__ != "IFPipeline" or getattr(pipe, "text_encoder", None) is None:
            raise load_error(c.model, f"diffusers loaded a {type(pipe).__name__}, not IF's stage-I IFPipeline "
                             f"with a text encoder", VALID_LAYOUT)
        self.model_id, self.scheduler = source, pipe.scheduler
        sched = pipe.scheduler.config
        self.num_train_timesteps = int(sched.num_train_timesteps)
        self.prediction_type = str(getattr(sched, "prediction_type", "epsilon"))
        reason = pz.check_prediction(self.prediction_type, self.parameterisation)
        if reason is not None:
            raise load_error(c.model, f"its scheduler predicts {self.prediction_type!r}: {reason}", VALID_LAYOUT)
        self.alphas_cumprod = torch.as_tensor(pipe.scheduler.alphas_cumprod, dtype=torch.float32)
        self._setup_pixels(pipe.unet, device)  # freezes the UNet and moves alphas_cumprod to the device
        out_channels = int(pipe.unet.config.out_channels)
        if out_channels not in (self.latent_channels, 2 * self.latent_channels):
            raise load_error(c.model, f"its UNet outputs {out_channels} channels for {self.latent_channels} in",
                             VALID_LAYOUT)
        # [eps, variance] with a learned variance (IF-I: 6 = 3 + 3): the prediction is the first half.
        self.eps_channels = self.latent_channels
        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        self.tokenizer.model_max_length = TEXT_MAX_LENGTH  # padding and length checks (TextPrompts) use it
        self.text_encoder.to(device)
        self.text_encoder.eval()
        self.text_encoder.requires_grad_(False)
        self.init_text_cache(files, source)

    @classmethod
    def check_config(cls, c: DeepFloydIFPriorConfig) -> None:
        """The view templates and the dtype (``inspect`` checks the model itself)."""
        check_view_templates(c.view_templates)
        if c.dtype != "auto":
            resolve_dtype(c.dtype, torch.device("cpu"))

    @classmethod
    def inspect(cls, cfg: Any, prompt: str) -> dict:
        """Every check of this prior that needs no weights, run before a run writes anything: the
        options, the model directory (layout, pipeline class, configs, whole weight files; a hub id
        must be cached when offline) and ``prompt`` against IF's 77 tokens (with each view's words).
        Returns the start-up facts: space pixel, conditioning text, latent_channels 3 and
        latent_size = pixel_size (64 for IF-I); empty for a hub id that will be downloaded."""
        c = parsed_config(cls, cfg, cls.describe())
        path = locate_pipeline(c.model, c.local_files_only, VALID_LAYOUT)
        if path is None:
            return {}
        facts = model_facts(path, c.model)
        if prompt:
            check_if_prompt_length(load_if_tokenizer(path, c.model), prompt.strip(), c.view_templates)
        return facts

    # ------------------------------------------------------------------ text
    def validate_prompt(self, prompt: str) -> None:
        """ConfigError for an empty prompt or one longer than 77 tokens as T5 reads it (lower-cased),
        alone or with any view's words (the checks ``inspect`` makes at start-up, on a built prior)."""
        DiffusionPrior.validate_prompt(self, prompt)
        check_if_prompt_length(self.tokenizer, prompt.strip(), self.cfg.view_templates)

    def token_count(self, prompt: str) -> int:
        """Tokens of ``prompt`` as T5 reads it (lower-cased), the end token included."""
        return super().token_count(if_text(prompt))

    def _run_text_encoder(self, prompts: list[str]) -> torch.Tensor:
        """N prompts -> [N, 77, D] T5 embeddings in ``dtype``: lower-cased as IF does, then
        TextPrompts' padded, masked encoder call (the cache keeps the prompts as given)."""
        return super()._run_text_encoder([if_text(p) for p in prompts])

    # ------------------------------------------------------------------ denoiser
    def denoiser_output(self, net: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor,
                        cond: torch.Tensor | None) -> torch.Tensor:
        """``net`` (the UNet or a trainable copy) at pixels z_t [B, 3, s, s] (VP: the network's own
        input), ticks t [B] and T5 embeddings cond [B, 77, D] -> its eps channels, float32
        [B, 3, s, s] (the learned-variance channels dropped)."""
        if cond is None:
            raise ValueError("The deepfloyd-if prior is text-conditioned: denoiser_output needs T5 embeddings "
                             "[B, 77, D] (prior.condition(prompt, views).cond, or .uncond for the empty prompt).")
        out = net(z_t.to(net.dtype), t, encoder_hidden_states=cond.to(device=z_t.device, dtype=net.dtype)).sample
        return out[:, : self.eps_channels].float()
