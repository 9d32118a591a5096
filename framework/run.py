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
from framework.errors import ConfigError
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
    device = torch.device(name)
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
        deterministic=False,
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


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train (mode=train, resuming from ``cfg.resume``), re-render (mode=test) or export a mesh (mode=export) into ``run_dir``."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not one of {', '.join(MODES)}.")
    check_trainer(cfg)
    check_writable(run_dir)
    device = pick_device(cfg.device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_run_info(run_dir, OmegaConf.to_container(cfg, resolve=True), device, cfg.mode)
    ckpt = resume_checkpoint(cfg, run_dir)
    if cfg.mode in ("test", "export") and ckpt is None:
        what = "re-renders" if cfg.mode == "test" else "exports the mesh of"
        raise ConfigError(f"mode={cfg.mode} {what} a finished run: pass resume=<run dir or .ckpt>.")
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
