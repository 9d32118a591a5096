"""The ``trainer`` section of a run config: scorelift's step settings and the Lightning Trainer
options it passes through, checked at start-up (part of ``scorelift.checks.check_inputs``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import parse_config
from .devices import pick_device
from .errors import ConfigError
from .stop_signals import DEFAULT_STOP_SIGNALS, parse_stop_signals


@dataclass(kw_only=True)
class TrainerConfig:
    """The ``trainer`` section: scorelift's own step settings, then the Lightning Trainer options
    that are passed through (``LIGHTNING_OPTIONS``; see ``check_trainer`` for what each allows)."""

    max_steps: int
    log_every_n_steps: int
    checkpoint_every: int
    progress_bar: bool
    eval_every: int  # shapes-world metrics every this many steps into eval_curve.csv (0: off)
    precision: Any  # Lightning precision: 32-true (default), bf16-mixed, 16-mixed (CUDA), 64-true; aliases 32, bf16, 16, 64
    accelerator: str  # auto (follows `device`) | cpu | gpu | cuda: must agree with `device`
    devices: Any  # 1: a run trains on one device, the one `device` names
    gradient_clip_val: Any  # null (off) or a number >= 0 (0: off): Lightning clips before each optimizer step
    gradient_clip_algorithm: str  # norm (the global L2 norm of all gradients) | value (each element)
    # scorelift's run-safety settings, with defaults (a config.yaml saved before they existed resumes)
    keep_checkpoints: int = 2  # checkpoints kept (last.ckpt and the newest older ones); a damaged newest falls back
    stop_signals: list = field(default_factory=lambda: list(DEFAULT_STOP_SIGNALS))  # checkpoint, then exit 75
    preview_every: int = 100  # steps between rewrites of <run>/preview.png, the object from 4 views (0: off)


# The Lightning Trainer options the trainer section passes through.
LIGHTNING_OPTIONS = ("precision", "accelerator", "devices", "gradient_clip_val", "gradient_clip_algorithm")
# Lightning's precision names and the aliases it accepts for them (normalised before Lightning sees them).
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
PRECISION_ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed", "64": "64-true"}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
CLIP_ALGORITHMS = ("norm", "value")
# Lightning Trainer options a run has no use for, and why (each fails with its reason).
NOT_LIGHTNING_HERE = {
    "max_epochs": "a run has no epochs (its batches are an endless stream of random cameras); its length is trainer.max_steps",
    "min_epochs": "a run has no epochs; its length is trainer.max_steps",
    "min_steps": "a run trains exactly trainer.max_steps steps",
    "accumulate_grad_batches": "every step already averages data.batch_size random views; raise data.batch_size instead",
    "strategy": "a run is one process on one device, which is Lightning's default strategy (auto)",
    "num_nodes": "a run uses one device of one machine",
    "val_check_interval": "there is no validation loop; system.validation_every sets how often validation images are written",
    "check_val_every_n_epoch": "there is no validation loop; system.validation_every sets how often validation images are written",
    "limit_val_batches": "there is no validation loop",
    "num_sanity_val_steps": "there is no validation loop",
    "limit_train_batches": "a run has no epochs; its length is trainer.max_steps",
    "deterministic": "use the top-level key deterministic=true",
    "default_root_dir": "the run directory is hydra.run.dir (or output_root)",
    "enable_checkpointing": "checkpoints/last.ckpt is written every trainer.checkpoint_every steps",
    "enable_progress_bar": "use trainer.progress_bar",
    "logger": "a run logs to <run>/logs/metrics.csv and <run>/tensorboard/",
}
# Options given their value of every run: accepted (Lightning-style configs carry them) and ignored.
HARMLESS_LIGHTNING = {"strategy": "auto", "num_nodes": 1}


def lightning_precision(value) -> str:
    """The Lightning precision name of an allowed ``trainer.precision`` (aliases normalised)."""
    text = str(value)
    return PRECISION_ALIASES.get(text, text)


def trainer_options_text() -> str:
    own = [f.name for f in fields(TrainerConfig) if f.name not in LIGHTNING_OPTIONS]
    return (
        f"The trainer section takes scorelift's own {', '.join(own)} and these Lightning Trainer options, "
        f"passed through: {', '.join(LIGHTNING_OPTIONS)}. Other Lightning options are not supported: a run "
        f"is one optimisation of trainer.max_steps steps on one device, fed by random cameras rather than a "
        f"dataset, so epochs, gradient accumulation, validation loops, distributed strategies and several "
        f"devices or nodes have no meaning in it."
    )


def check_trainer_keys(section: dict) -> dict:
    """``section`` without the harmless Lightning keys; ConfigError for any other unknown key."""
    known = {f.name for f in fields(TrainerConfig)}
    section = {k: v for k, v in section.items() if not (k in HARMLESS_LIGHTNING and v == HARMLESS_LIGHTNING[k])}
    for key, value in section.items():
        if key in known:
            continue
        reason = NOT_LIGHTNING_HERE.get(key)
        why = f"{reason}. " if reason else ""
        raise ConfigError(f"trainer.{key}={value!r} is not a trainer option here: {why}{trainer_options_text()}")
    return section


def check_lightning_options(trainer: TrainerConfig, device_name) -> None:
    """precision, accelerator, devices and gradient clipping: allowed values, and agreement with
    ``device`` (which decides where a run trains; trainer.accelerator may only say the same)."""
    precision = trainer.precision
    allowed = f"{', '.join(PRECISIONS)} (or the aliases {', '.join(PRECISION_ALIASES)})"
    if isinstance(precision, bool) or not isinstance(precision, (int, str)) or lightning_precision(precision) not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is not supported; use one of {allowed}. 32-true is full float32 "
            f"(the default); the -mixed ones run the step under autocast with float32 weights."
        )
    if trainer.accelerator not in ACCELERATORS:
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator!r} is not supported; use one of {', '.join(ACCELERATORS)}. "
            f"Where a run trains is chosen by device= (auto, cpu, cuda, cuda:N); trainer.accelerator=auto follows it."
        )
    if isinstance(trainer.devices, bool) or trainer.devices != 1:
        raise ConfigError(
            f"trainer.devices={trainer.devices!r}: a scorelift run trains on one device, so trainer.devices "
            f"must be 1 (pick which one with device=cuda:N). To keep several GPUs busy, run several runs: one "
            f"launch per GPU (device=cuda:0, device=cuda:1, ...), or many at once with the benchmark "
            f"(scorelift-bench --workers N)."
        )
    clip = trainer.gradient_clip_val
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip >= 0):
        raise ConfigError(
            f"trainer.gradient_clip_val={clip!r} must be null (no clipping) or a number >= 0 (0 also means no "
            f"clipping); Lightning clips the gradients to it before each optimizer step."
        )
    if trainer.gradient_clip_algorithm not in CLIP_ALGORITHMS:
        raise ConfigError(
            f"trainer.gradient_clip_algorithm={trainer.gradient_clip_algorithm!r} is not supported; use norm "
            f"(scale all gradients so that their global L2 norm is at most gradient_clip_val) or value (clamp "
            f"each gradient element to [-gradient_clip_val, gradient_clip_val])."
        )

    device = pick_device(device_name)
    wanted = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}.get(trainer.accelerator)
    if wanted is not None and wanted != device.type:
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} contradicts device={device_name} (which trains on "
            f"{device}). device= decides where a run trains; trainer.accelerator may only be auto (follow "
            f"device) or say the same. Set device={wanted} instead, or trainer.accelerator=auto."
        )
    if lightning_precision(precision) == "16-mixed" and device.type != "cuda":
        raise ConfigError(
            f"trainer.precision={precision} (float16 mixed precision) needs a CUDA device, but device={device_name} "
            f"trains on {device}; on the CPU use trainer.precision=bf16-mixed (bfloat16 autocast) or 32-true."
        )


def check_trainer(cfg: DictConfig) -> TrainerConfig:
    """The trainer section, type-checked before anything is loaded or written: scorelift's step
    settings, the Lightning options it passes through (``check_lightning_options``), and a
    clear refusal, with the reason, of Lightning options that have no meaning for a run."""
    section = cfg.trainer
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    if isinstance(section, dict):
        section = check_trainer_keys(section)
    trainer = parse_config(TrainerConfig, section, "trainer")
    for key in ("max_steps", "log_every_n_steps", "checkpoint_every"):
        if getattr(trainer, key) < 1:
            raise ConfigError(f"trainer.{key}={getattr(trainer, key)} must be a positive number of steps.")
    if trainer.keep_checkpoints < 1:
        raise ConfigError(
            f"trainer.keep_checkpoints={trainer.keep_checkpoints} must be at least 1 (last.ckpt); with 2 or more "
            f"a damaged newest checkpoint leaves an older one to resume from."
        )
    parse_stop_signals(trainer.stop_signals)
    if trainer.eval_every < 0:
        raise ConfigError(f"trainer.eval_every={trainer.eval_every} must be 0 (off) or a positive number of steps.")
    if trainer.preview_every < 0:
        raise ConfigError(f"trainer.preview_every={trainer.preview_every} must be 0 (off) or a positive number of "
                          f"steps between rewrites of preview.png.")
    check_lightning_options(trainer, cfg.device)
    return trainer
