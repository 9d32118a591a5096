"""The ``diffusers-unet`` prior: a pixel-space ``UNet2DModel`` with a DDPM or DDIM scheduler, the
layout of the unconditional FFHQ / LSUN / CelebA-HQ / church models on the hub
(``DDPMPipeline`` / ``DDIMPipeline`` save_pretrained: model_index.json, unet/, scheduler/).

Unconditional, or class-conditional when the UNet has ``num_class_embeds``: the prompt then names
a class (``prior.class_names`` maps names to labels) and classifier-free guidance applies only if
the model was trained with a null class (``prior.null_class``). A learned-variance model
(``variance_type`` learned / learned_range, 2C output channels) is read by its first C channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from scorelift.interfaces.base import parsed_config
from scorelift.errors import ConfigError
from scorelift.maths import parameterisation as pz
from scorelift.library.pixel_prior import (
    WEIGHT_FILES,
    PixelDenoiserPrior,
    check_weights,
    class_index_of,
    learned_variance,
    load_diffusers_pipeline,
    pipeline_source,
)
from scorelift.library.pipelines import load_error, locate_pipeline, read_json, resolve_dtype
from scorelift.registry import register

log = logging.getLogger(__name__)

REQUIRED_PARTS: dict[str, list[tuple[str, ...]]] = {
    "unet": [("config.json",), WEIGHT_FILES],
    "scheduler": [("scheduler_config.json",)],
}

VALID_LAYOUT = (
    "A valid diffusers-unet prior is a diffusers DDPMPipeline or DDIMPipeline directory (the save_pretrained "
    "layout): model_index.json plus unet/ (a UNet2DModel: config.json and weights) and scheduler/ "
    "(scheduler_config.json of a DDPM or DDIM scheduler). Point `prior.model` at such a directory "
    "(e.g. `prior.model=/path/to/ddpm-ema-church-256`), or at a hub id with `prior.local_files_only=false` "
    "on a machine with network access; score-SDE (ScoreSdeVeScheduler) models load with `prior=score-sde`."
)

VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")


@dataclass(kw_only=True)
class DiffusersUNetPriorConfig:
    """Options of the ``diffusers-unet`` prior and their defaults (``prior=diffusers-unet prior.<option>=...``)."""

    # Local pipeline directory (DDPMPipeline / DDIMPipeline layout) or a Hugging Face hub id.
    model: str = "google/ddpm-ema-church-256"
    # Offline-first: never touch the network; set false to download a hub id.
    local_files_only: bool = True
    # auto: float16 on CUDA, float32 elsewhere; or float32 | float16 | bfloat16.
    dtype: str = "auto"
    # Class-conditional models: the class names in label order, so that `prompt` may name a class
    # (a class index 0..num_class_embeds-1 is accepted either way). Unused by unconditional models.
    class_names: list[str] = field(default_factory=list)
    # The label the model was trained with as "no class" (classifier-free guidance against it), or
    # null: the model has no unconditional branch and the guidance uses the conditional prediction.
    null_class: Optional[int] = None


def model_facts(path: Path, model: str, c: DiffusersUNetPriorConfig) -> dict:
    """Check a DDPM/DDIM pipeline directory without loading weights (layout, configs, whole weight
    files, the options against the UNet) and return its start-up facts."""
    from scorelift.library.pipelines import check_pipeline_dir

    check_pipeline_dir(path, model, REQUIRED_PARTS, VALID_LAYOUT)
    read_json(path / "model_index.json", model, VALID_LAYOUT)
    unet = read_json(path / "unet" / "config.json", model, VALID_LAYOUT)
    sched = read_json(path / "scheduler" / "scheduler_config.json", model, VALID_LAYOUT)
    check_weights(path / "unet", model, VALID_LAYOUT)
    name = sched.get("_class_name")
    if name not in VP_SCHEDULERS:
        other = " (a score-SDE model: use prior=score-sde)" if name == "ScoreSdeVeScheduler" else ""
        raise load_error(model, f"its scheduler is {name!r}, not one of {', '.join(VP_SCHEDULERS)}{other}", VALID_LAYOUT)
    prediction = str(sched.get("prediction_type", "epsilon"))
    if prediction not in pz.VALID["vp"]:
        raise load_error(model, f"its scheduler predicts {prediction!r}; supported: {', '.join(pz.VALID['vp'])}", VALID_LAYOUT)
    try:
        channels, size = int(unet["in_channels"]), int(unet["sample_size"])
        out_channels = int(unet.get("out_channels", channels))
    except (KeyError, TypeError, ValueError) as exc:
        raise load_error(model, f"its unet/config.json lacks a usable {exc}", VALID_LAYOUT) from None
    expected = 2 * channels if learned_variance(sched.get("variance_type")) else channels
    if out_channels != expected:
        raise load_error(
            model, f"its UNet outputs {out_channels} channels for {channels} in, but its scheduler's variance_type "
            f"{sched.get('variance_type')!r} means {expected}", VALID_LAYOUT)
    if channels != 3:
        raise load_error(model, f"its UNet takes {channels} channels; a pixel prior takes RGB (3)", VALID_LAYOUT)
    num_classes = unet.get("num_class_embeds")
    if num_classes is None and c.null_class is not None:
        raise ConfigError(
            f"prior.null_class={c.null_class} is set, but the model {model!r} is unconditional (its UNet has no "
            f"num_class_embeds); leave prior.null_class null."
        )
    if num_classes is not None and c.null_class is not None and not 0 <= c.null_class < int(num_classes):
        raise ConfigError(
            f"prior.null_class={c.null_class} is not a class of the model {model!r}, which has {num_classes} "
            f"(labels 0..{int(num_classes) - 1})."
        )
    conditioning = "none" if num_classes is None else "class"
    return {"space": "pixel", "conditioning": conditioning,
            "has_unconditional": conditioning == "none" or c.null_class is not None,
            "num_classes": None if num_classes is None else int(num_classes),
            "latent_channels": channels, "latent_size": size, "pixel_size": size}


@register("prior", "diffusers-unet")
class DiffusersUNetPrior(PixelDenoiserPrior):
    """A frozen DDPM-family pixel model (UNet2DModel + DDPM/DDIM scheduler), unconditional or
    class-conditional. Attributes: those of PixelDenoiserPrior, plus num_classes (None when
    unconditional) and class_names."""

    # one line for `scorelift --list`
    summary = "A pixel-space DDPM-family UNet (diffusers UNet2DModel), unconditional or class-conditioned."

    Config = DiffusersUNetPriorConfig
    capabilities = frozenset({"trainable_denoiser"})
    parameterisation = "vp"
    # Before a model is read: unconditional, so the start-up check asks no prompt of it; ``inspect``
    # and the loaded prior say "class" for a model with num_class_embeds.
    conditioning = "none"

    def __init__(self, cfg: Any = None, device: torch.device | str = "cpu"):
        super().__init__(cfg)
        c = self.cfg
        device = torch.device(device)
        source, local = pipeline_source(c.model, REQUIRED_PARTS, VALID_LAYOUT)
        if local is not None:
            model_facts(local, c.model, c)  # named errors before diffusers is asked
        self.dtype = resolve_dtype(c.dtype, device)
        pipe = load_diffusers_pipeline(source, self.dtype, c.local_files_only, c.model, VALID_LAYOUT)
        unet, scheduler = getattr(pipe, "unet", None), getattr(pipe, "scheduler", None)
        if unet is None or scheduler is None or not hasattr(scheduler, "alphas_cumprod"):
            raise load_error(c.model, f"diffusers loaded a {type(pipe).__name__} without a UNet and a DDPM/DDIM "
                             f"scheduler", VALID_LAYOUT)
        num_classes = unet.config.get("num_class_embeds")
        self.model_id, self.scheduler = source, scheduler
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = str(getattr(scheduler.config, "prediction_type", "epsilon"))
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
        self._setup_pixels(unet, device)
        self.conditioning = "none" if num_classes is None else "class"
        self.has_unconditional = self.conditioning == "none" or c.null_class is not None
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_names = list(c.class_names)
        self.null_class = c.null_class
        if self.conditioning == "class" and self.null_class is None:
            log.info("The class-conditional prior %s has no null class (prior.null_class): no classifier-free "
                     "guidance, the guidance uses the conditional prediction alone.", c.model)

    @classmethod
    def check_config(cls, c: DiffusersUNetPriorConfig) -> None:
        """The dtype and the class names (``inspect`` checks the model itself)."""
        if c.dtype != "auto":
            resolve_dtype(c.dtype, torch.device("cpu"))
        if len(set(n.strip().lower() for n in c.class_names)) != len(c.class_names):
            raise ConfigError(f"prior.class_names={list(c.class_names)} repeats a name; each class needs its own.")

    @classmethod
    def inspect(cls, cfg: Any, prompt) -> dict:
        """The options, the model directory (layout, configs, whole weights; a hub id must be cached
        when offline) and the prompt: none for an unconditional model, a class name or index for a
        class-conditional one. Returns the start-up facts (empty for a hub id to be downloaded)."""
        c = parsed_config(cls, cfg, cls.describe())
        path = locate_pipeline(c.model, c.local_files_only, VALID_LAYOUT)
        if path is None:
            return {}
        facts = model_facts(path, c.model, c)
        if facts["conditioning"] == "class":
            class_index_of(prompt, c.class_names, facts["num_classes"])
        if len(c.class_names) > (facts["num_classes"] or 0):
            raise ConfigError(
                f"prior.class_names has {len(c.class_names)} names, but the model {c.model!r} has "
                f"{facts['num_classes'] or 0} classes; give at most one name per class."
            )
        return facts

    def class_index(self, prompt) -> int:
        return class_index_of(prompt, self.class_names, self.num_classes)

    def validate_prompt(self, prompt) -> None:
        """ConfigError unless ``prompt`` suits the model: none (unconditional) or a class."""
        if self.conditioning == "class":
            self.class_index(prompt)
