"""One run of the framework: build the parts from a composed config, train / re-render, write outputs."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from framework import builders, registry
from framework.config import parse_config
from framework.errors import ConfigError, PluginError
from framework.library_noise import quiet_known_library_noise
from framework.outputs.checkpoint import AtomicCheckpoint
from framework.outputs.final import ValidationImages, write_final_outputs
from framework.outputs.mesh import export_mesh
from framework.outputs.progress import StepProgressBar
from framework.outputs.quality_curve import QualityCurve
from framework.outputs.timing import StepTimer
from framework.run_info import write_run_info

log = logging.getLogger(__name__)
MODES = ("train", "test", "export")


class StepIndices(torch.utils.data.IterableDataset):
    """An endless stream of dummy batches: every random draw of a step is made inside the system
    from (seed, global_step), so the dataloader carries no state that a resume could lose."""

    def __iter__(self):
        while True:
            yield 0


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


def check_writable(run_dir: Path) -> None:
    """Fail at start, not after hours of training, if outputs cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-") as fh:
            fh.write(b"0" * 1024 * 1024)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ConfigError(
            f"The run directory {str(run_dir)!r} is not writable ({exc.strerror or exc}). Choose another "
            f"place with hydra.run.dir=... or output_root=..., or free space there."
        ) from None


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


def build_system(cfg: DictConfig, device: torch.device):
    """The prior and the system named by cfg.system.type, on ``device``."""
    for path in cfg.plugins.paths:
        registry.load_plugin_file(path)
    prior = builders.build("prior", cfg.prior, device)
    system_cls = registry.find("system", cfg.system.type)
    return system_cls(OmegaConf.to_container(cfg, resolve=True), prior).to(device)


def make_trainer(cfg: DictConfig, run_dir: Path, device: torch.device) -> pl.Trainer:
    from pytorch_lightning.loggers import CSVLogger

    timer = StepTimer(run_dir)  # first, so its step times exclude the checkpoint and image writes
    return pl.Trainer(
        max_steps=cfg.trainer.max_steps,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        logger=CSVLogger(save_dir=str(run_dir), name="", version="logs"),
        callbacks=[
            timer,
            QualityCurve(run_dir, cfg.trainer.eval_every, timer),
            AtomicCheckpoint(checkpoint_path(run_dir), cfg.trainer.checkpoint_every),
            ValidationImages(run_dir),
            *([StepProgressBar()] if cfg.trainer.progress_bar else []),
        ],
        enable_checkpointing=False,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=bool(cfg.deterministic),  # also cudnn.benchmark off and cuBLAS's fixed workspace
        default_root_dir=str(run_dir),
    )


def load_weights(system, ckpt: Path) -> int:
    """Load a checkpoint's weights (and guidance state) into ``system``; returns its global step."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    system.on_load_checkpoint(state)
    system.load_state_dict(state["state_dict"])
    return int(state.get("global_step", 0))


@dataclass
class TrainerConfig:
    max_steps: int
    log_every_n_steps: int
    checkpoint_every: int
    progress_bar: bool
    eval_every: int  # shapes-world metrics every this many steps into eval_curve.csv (0: off)


def check_trainer(cfg: DictConfig) -> TrainerConfig:
    """The trainer section, type-checked before anything is loaded or written."""
    trainer = parse_config(TrainerConfig, cfg.trainer, "trainer")
    for key in ("max_steps", "log_every_n_steps", "checkpoint_every"):
        if getattr(trainer, key) < 1:
            raise ConfigError(f"trainer.{key}={getattr(trainer, key)} must be a positive number of steps.")
    if trainer.eval_every < 0:
        raise ConfigError(f"trainer.eval_every={trainer.eval_every} must be 0 (off) or a positive number of steps.")
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
            f"(python launch.py --list shows them with where they come from)."
        ) from None


def check_part(kind: str, node, key: str):
    """Parse the config of the part at ``key`` against its plugin's Config; returns (class, config)."""
    node = builders.plain(node) if isinstance(node, DictConfig) or node is None else node
    if not isinstance(node, dict):
        raise ConfigError(f"The config of {key} must be a mapping of keys to values, got {node!r}.")
    cls = find_plugin(kind, node.get("type"), f"{key}.type")
    config_cls = getattr(cls, "Config", None)
    merged = builders.merged_config(kind, node["type"], node)
    parsed = parse_config(config_cls, merged, f"{key} ({node['type']})") if config_cls is not None else merged
    return cls, parsed


def render_kind(geometry_cls, geometry_node) -> str | None:
    """"latent" or "rgb" for a geometry plugin whose module maps feature_activation to a kind
    (FEATURE_KINDS, as the built-in ones do); None when that cannot be told without building it."""
    import sys

    kinds = getattr(sys.modules.get(geometry_cls.__module__), "FEATURE_KINDS", None)
    activation = builders.plain(geometry_node).get("feature_activation")
    if isinstance(kinds, dict) and activation in kinds:
        return kinds[activation]
    return None


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


def check_inputs(cfg: DictConfig, run_dir: Path | None = None) -> None:
    """Every check that needs no model weights, before anything is loaded or written: mode, seed,
    device, prompt, trainer, cameras, resume, each part's config and the prior's model (layout,
    tokenizer limit, image sizes). ConfigError / PluginError / PriorLoadError name the key."""
    from framework.data.cameras import CameraSamplerConfig, check_sampler_config

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
        from framework.outputs.mesh import check_export_config

        try:
            check_export_config(cfg.export)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                f"The export section has a value of the wrong type ({exc}); see configs/config.yaml."
            ) from None
    check_resume(cfg, run_dir)
    for path in cfg.plugins.paths:
        registry.load_plugin_file(path)

    from framework.schedule import check_scheduled
    from framework.systems.score_distillation import ScoreDistillationSystem, SystemConfig

    system_cls = find_plugin("system", OmegaConf.select(cfg, "system.type"), "system.type")
    if issubclass(system_cls, ScoreDistillationSystem):
        system = parse_config(SystemConfig, cfg.system, "system")
        for name, opts in system.losses.items():
            check_part("loss", {**(opts or {}), "type": name}, f"system.losses.{name}")
        for key, value in system.loss_weights.items():
            check_scheduled(value, f"system.loss_weights.{key}")
    geometry_cls, _ = check_part("geometry", cfg.geometry, "geometry")
    check_part("background", cfg.background, "background")
    check_part("renderer", cfg.renderer, "renderer")
    check_part("guidance", cfg.guidance, "guidance")
    prior_cls, _ = check_part("prior", cfg.prior, "prior")
    facts = {}
    inspect = getattr(prior_cls, "check_inputs", None)
    if inspect is not None:
        facts = inspect(builders.merged_config("prior", cfg.prior.type, cfg.prior), prompt) or {}
    check_resolution(cfg, render_kind(geometry_cls, cfg.geometry), facts)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train (mode=train, resuming from ``cfg.resume``), re-render (mode=test) or export a mesh (mode=export) into ``run_dir``."""
    quiet_known_library_noise()
    check_inputs(cfg, run_dir)
    check_writable(run_dir)
    device = pick_device(cfg.device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_run_info(run_dir, OmegaConf.to_container(cfg, resolve=True), device, cfg.mode)
    ckpt = resume_checkpoint(cfg, run_dir)  # not None in mode test/export: check_resume saw to that
    if cfg.deterministic:
        # cuBLAS reads this when its first handle is made, which may happen while the prior is built
        # (before Lightning, which sets it too, starts).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    system = build_system(cfg, device)

    if cfg.mode == "export":
        log.info("Exporting the mesh of %s at step %d", run_dir, load_weights(system, ckpt))
        return {"mesh": export_mesh(system, cfg.export, run_dir)}
    if cfg.mode == "test":
        log.info("Re-rendering %s at step %d", run_dir, load_weights(system, ckpt))
    else:
        trainer = make_trainer(cfg, run_dir, device)
        data = torch.utils.data.DataLoader(StepIndices(), batch_size=None)
        trainer.fit(system, data, ckpt_path=str(ckpt) if ckpt else None)
        system.to(device)  # Lightning's teardown moves the module back to the CPU after fit
    return write_final_outputs(system, run_dir)
