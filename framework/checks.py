"""Every check of a composed run config that needs no model weights, in one place.

``check_inputs`` runs once per launch, before anything is loaded or written: mode, seed, device,
prompt, trainer, cameras, export options, resume, each part's config, and the composition of the
parts (render kind against the prior's latent size and channels, guidance against render kind),
fed by what the parts declare (``Geometry.feature_kind_of``, ``Guidance.supports_*``,
``DiffusionPrior.inspect``). ConfigError / PluginError / PriorLoadError name the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from scorelift import builders, registry
from scorelift.config import parse_config
from scorelift.errors import ConfigError, PluginError

MODES = ("train", "test", "export")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:<index>.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for, but CUDA is not available here; use device=cpu or device=auto.")
    return device


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``resume`` itself if it is a file, else the run's last.ckpt."""
    if not cfg.resume:
        return None
    given = Path(str(cfg.resume))
    ckpt = given if given.is_file() else checkpoint_path(run_dir)
    if not ckpt.is_file():
        raise ConfigError(
            f"resume={cfg.resume!r}: no checkpoint at {str(ckpt)!r}. Pass a run directory that holds "
            f"checkpoints/last.ckpt, or the path of a .ckpt file."
        )
    return ckpt


@dataclass
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
            f"(benchmark.py --workers N)."
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
    if trainer.eval_every < 0:
        raise ConfigError(f"trainer.eval_every={trainer.eval_every} must be 0 (off) or a positive number of steps.")
    check_lightning_options(trainer, cfg.device)
    return trainer


def check_prompt(prompt) -> str:
    """The prompt, stripped; ConfigError if it is not text or is empty (any prior)."""
    if isinstance(prompt, (int, float)) and not isinstance(prompt, bool):
        prompt = str(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(
            f"The prompt is empty ({prompt!r}); set `prompt` to a description such as 'a red cube'."
        )
    return prompt.strip()


def checkpoint_system(ckpt: Path) -> str | None:
    """The system name a scorelift checkpoint was written by (None if it does not say), read
    without loading its tensors."""
    try:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap cannot map it, read it whole
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (a truncated or foreign file: say which and why)
        raise ConfigError(
            f"The checkpoint {str(ckpt)!r} cannot be read ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0]}); pass another run directory or .ckpt file to resume=."
        ) from None
    meta = state.get("scorelift", {}) if isinstance(state, dict) else {}
    return meta.get("system")


def check_resume(cfg: DictConfig, run_dir: Path | None) -> None:
    """mode and resume agree, the checkpoint exists, and it was written by this run's system."""
    if not cfg.resume:
        if cfg.mode in ("test", "export"):
            what = "re-renders" if cfg.mode == "test" else "exports the mesh of"
            raise ConfigError(f"mode={cfg.mode} {what} a finished run: pass resume=<run dir or .ckpt>.")
        return
    given = Path(str(cfg.resume)).expanduser()
    if not given.exists():
        raise ConfigError(
            f"resume={cfg.resume!r} does not exist. Pass a run directory (e.g. outputs/sjc-paas/a_red_cube@...) "
            f"or a checkpoint file inside one."
        )
    ckpt = resume_checkpoint(cfg, run_dir if run_dir is not None else given)
    written_by = checkpoint_system(ckpt)
    name = OmegaConf.select(cfg, "system.name")
    if written_by not in (None, name):
        raise ConfigError(
            f"The checkpoint was written by system {written_by!r}, but this run is system "
            f"{name!r}; resume it with system={written_by}."
        )


def find_plugin(kind: str, name, key: str):
    """The class of plugin ``name`` of ``kind``; the error names the config key that chose it."""
    if not isinstance(name, str) or not name:
        choices = ", ".join(registry.available(kind)[kind]) or "(none)"
        raise ConfigError(f"{key}={name!r} must name a {kind} plugin; the registered ones are: {choices}.")
    try:
        return registry.find(kind, name)
    except PluginError:
        choices = ", ".join(registry.available(kind)[kind]) or "(none)"
        raise ConfigError(
            f"{key}={name!r} names no registered {kind} plugin; the registered ones are: {choices} "
            f"(`scorelift --list` shows them with where they come from)."
        ) from None


def check_part(kind: str, node, key: str):
    """Parse the config of the part at ``key`` against its plugin's Config and run the plugin's own
    ``check_config`` on it; returns (class, parsed config)."""
    node = builders.plain(node) if isinstance(node, DictConfig) or node is None else node
    if not isinstance(node, dict):
        raise ConfigError(f"The config of {key} must be a mapping of keys to values, got {node!r}.")
    cls = find_plugin(kind, node.get("type"), f"{key}.type")
    config_cls = getattr(cls, "Config", None)
    merged = builders.merged_config(kind, node["type"], node)
    parsed = parse_config(config_cls, merged, f"{key} ({node['type']})") if config_cls is not None else merged
    check = getattr(cls, "check_config", None)
    if check is not None:
        check(parsed)
    return cls, parsed


def check_resolution(cfg: DictConfig, kind: str | None, facts: dict) -> None:
    """The render size against what the prior takes: latent renders must be the prior's latent
    size; RGB renders are resized to its (square) pixel size, so they must be square."""
    height, width = int(cfg.data.height), int(cfg.data.width)
    if kind == "latent":
        size = facts.get("latent_size")
        if size is not None and (height, width) != (size, size):
            raise ConfigError(
                f"Latent renders must match the prior's latent size {size}x{size}, but data.height x "
                f"data.width is {height}x{width}; set data.height={size} data.width={size} (or render RGB)."
            )
    elif kind == "rgb" and height != width:
        pixels = facts.get("pixel_size")
        takes = f"{pixels}x{pixels}" if pixels else "square"
        raise ConfigError(
            f"data.height x data.width is {height}x{width}, but the prior's VAE takes {takes} images and "
            f"a non-square render would be stretched to a square; set data.width={height} (renders of "
            f"any square size are resized to the prior's)."
        )


def check_composition(cfg: DictConfig, parts: dict, facts: dict) -> None:
    """The parts against each other: the background's channels against the geometry's, latent
    channels against the prior's, the render kind against what the guidance accepts, and the
    render size against the prior (``check_resolution``). ``parts``: kind -> (class, parsed config)."""
    geometry_cls, geometry_cfg = parts["geometry"]
    guidance_cls = parts["guidance"][0]
    n_geometry = getattr(geometry_cfg, "n_features", None)
    n_background = getattr(parts["background"][1], "n_features", None)
    if None not in (n_geometry, n_background) and n_geometry != n_background:
        raise ConfigError(
            f"The geometry renders {n_geometry} channels (geometry.n_features) but the background has "
            f"{n_background} (background.n_features); they must match."
        )
    kind = geometry_cls.feature_kind_of(geometry_cfg)
    guidance = cfg.guidance.type
    if kind == "latent":
        channels = facts.get("latent_channels")
        if None not in (channels, n_geometry) and n_geometry != channels:
            raise ConfigError(
                f"Latent geometry renders {n_geometry} channels but the prior's latents have {channels}; "
                f"set geometry.n_features={channels}."
            )
        if not guidance_cls.supports_latent:
            raise ConfigError(
                f"guidance={guidance} needs RGB renders, but this system renders {n_geometry}-channel latents "
                f"(geometry.feature_activation={getattr(geometry_cfg, 'feature_activation', '?')}). Use it with "
                f"system=dreamfusion or system=prolificdreamer, or render RGB here with geometry.n_features=3 "
                f"geometry.feature_activation=sigmoid background.n_features=3. Valid combinations: README, "
                f"'Methods and valid combinations'."
            )
    elif kind == "rgb":
        if n_geometry is not None and n_geometry != 3:
            raise ConfigError(f"RGB geometry must have 3 features, got geometry.n_features={n_geometry}.")
        if not guidance_cls.supports_rgb:
            raise ConfigError(
                f"guidance={guidance} needs latent renders, but this system renders RGB; use system=sjc "
                f"(latent voxel grid). Valid combinations: README, 'Methods and valid combinations'."
            )
    check_resolution(cfg, kind, facts)


def check_inputs(cfg: DictConfig, run_dir: Path | None = None) -> None:
    """Every check that needs no model weights, before anything is loaded or written: mode, seed,
    device, prompt, trainer, cameras, resume, each part's config, the prior's model (layout,
    tokenizer limit, image sizes) and how the parts fit together. ConfigError / PluginError /
    PriorLoadError name the key."""
    from scorelift.data.cameras import CameraSamplerConfig, check_sampler_config

    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not one of {', '.join(MODES)}.")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r} must be a whole number (e.g. seed=3).")
    pick_device(cfg.device)
    if not isinstance(cfg.deterministic, bool):
        raise ConfigError(f"deterministic={cfg.deterministic!r} must be true or false.")
    prompt = check_prompt(cfg.prompt)
    check_trainer(cfg)
    check_sampler_config(parse_config(CameraSamplerConfig, cfg.data, "data"))
    if cfg.mode == "export":
        from scorelift.outputs.mesh import check_export_config

        try:
            check_export_config(cfg.export)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                f"The export section has a value of the wrong type ({exc}); see the export section of "
                f"`scorelift --cfg job`."
            ) from None
    check_resume(cfg, run_dir)
    for path in cfg.plugins.paths:
        registry.load_plugin_file(path)

    for name in cfg.evaluators:
        find_plugin("evaluator", name, "evaluators")
    system_cls = find_plugin("system", OmegaConf.select(cfg, "system.type"), "system.type")
    system_cls.check_config(cfg)
    parts = {kind: check_part(kind, cfg[kind], kind) for kind in ("geometry", "background", "renderer", "guidance", "prior")}
    prior_cls, prior_cfg = parts["prior"]
    missing = [need for need in parts["guidance"][0].requires if need not in prior_cls.capabilities]
    if missing:
        raise ConfigError(
            f"guidance={cfg.guidance.type} needs the prior capability {', '.join(missing)}, which prior "
            f"{cfg.prior.type!r} ({prior_cls.__name__}) does not declare (its capabilities: "
            f"{', '.join(sorted(prior_cls.capabilities)) or 'none'}). Pick another guidance or a prior that has it."
        )
    facts = prior_cls.inspect(prior_cfg, prompt)
    check_composition(cfg, parts, facts)
