"""One run: build the parts from a checked config, then create the run directory, train / re-render / export, write outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from scorelift import builders, registry
from scorelift.checks import check_inputs, checkpoint_path, pick_device, resume_checkpoint
from scorelift.errors import ConfigError
from scorelift.library_noise import quiet_known_library_noise
from scorelift.outputs.checkpoint import AtomicCheckpoint
from scorelift.outputs.final import ValidationImages, write_final_outputs
from scorelift.outputs.mesh import export_mesh
from scorelift.outputs.progress import StepProgressBar
from scorelift.outputs.evaluation import Evaluation, applicable_evaluators
from scorelift.outputs.timing import StepTimer
from scorelift.run_info import write_run_info

log = logging.getLogger(__name__)


class StepIndices(torch.utils.data.IterableDataset):
    """An endless stream of dummy batches: every random draw of a step is made inside the system
    from (seed, global_step), so the dataloader carries no state that a resume could lose."""

    def __iter__(self):
        while True:
            yield 0


def check_writable(run_dir: Path) -> None:
    """Fail at start, not after hours of training, if outputs cannot be written: a 1 MiB test
    file in the run directory, or (a new run) in its nearest existing parent. Leaves nothing."""
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".scorelift-write-test-") as fh:
            fh.write(b"0" * 1024 * 1024)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ConfigError(
            f"The run directory {str(run_dir)!r} is not writable ({exc.strerror or exc}). Choose another "
            f"place with hydra.run.dir=... or output_root=..., or free space there."
        ) from None


def write_start_files(cfg: DictConfig, run_dir: Path, overrides: list[str] | None, device: torch.device) -> None:
    """What a started run records: config.yaml (resolved), .hydra/config.yaml (as composed) and
    .hydra/overrides.yaml (the command line's overrides, which ``resume=`` re-applies), run_info.json."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_text_atomic(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    if overrides is not None:
        write_text_atomic(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(list(overrides), default_flow_style=False))
    write_run_info(run_dir, OmegaConf.to_container(cfg, resolve=True), device, cfg.mode)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def run_log(run_dir: Path):
    """Copy every log record of the run into ``run_dir/launch.log`` (appended on resume)."""
    handler = logging.FileHandler(run_dir / "launch.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def build_system(cfg: DictConfig, device: torch.device):
    """The prior and the system named by cfg.system.type, on ``device``."""
    for path in cfg.plugins.paths:
        registry.load_plugin_file(path)
    prior = builders.build("prior", cfg.prior, device)
    system_cls = registry.find("system", cfg.system.type)
    return system_cls(OmegaConf.to_container(cfg, resolve=True), prior).to(device)


def make_trainer(cfg: DictConfig, run_dir: Path, device: torch.device, timer: StepTimer, evaluation: Evaluation) -> pl.Trainer:
    """Lightning's Trainer for one run on ``device``: loggers to ``<run>/logs/metrics.csv`` and
    ``<run>/tensorboard/``, scorelift's callbacks, and the Lightning options of the trainer section
    (checked at start-up by ``check_trainer``: trainer.accelerator and trainer.devices only agree
    with ``device``, which is what places the run)."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from scorelift.trainer_options import lightning_precision

    return pl.Trainer(
        max_steps=cfg.trainer.max_steps,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=lightning_precision(cfg.trainer.precision),
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        gradient_clip_algorithm=cfg.trainer.gradient_clip_algorithm,
        # the CSV logger first: it is trainer.logger (the TensorBoard one is in trainer.loggers)
        logger=[
            CSVLogger(save_dir=str(run_dir), name="", version="logs"),
            TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False),
        ],
        callbacks=[
            timer,  # first, so its step times exclude the evaluation, checkpoint and image writes
            evaluation,
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


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, checked: bool = False) -> dict:
    """Train (mode=train, resuming from ``cfg.resume``), re-render (mode=test) or export a mesh
    (mode=export) into ``run_dir``.

    Order: check the config (unless the caller did: ``checked``), build the prior and the system,
    and only then create ``run_dir`` and write into it, so a run that cannot start writes nothing.
    ``overrides``: the command line that composed ``cfg``, saved for ``resume=``.
    """
    quiet_known_library_noise()
    run_dir = Path(run_dir)
    if not checked:
        check_inputs(cfg, run_dir)
    check_writable(run_dir)
    device = pick_device(cfg.device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt = resume_checkpoint(cfg, run_dir)  # not None in mode test/export: check_resume saw to that
    if cfg.deterministic:
        # cuBLAS reads this when its first handle is made, which may happen while the prior is built
        # (before Lightning, which sets it too, starts).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    system = build_system(cfg, device)

    run_dir.mkdir(parents=True, exist_ok=True)
    write_start_files(cfg, run_dir, overrides, device)
    with run_log(run_dir):
        log.info("Run directory: %s", run_dir)
        if cfg.mode == "export":
            log.info("Exporting the mesh of %s at step %d", run_dir, load_weights(system, ckpt))
            return {"mesh": export_mesh(system, cfg.export, run_dir)}
        timer = StepTimer(run_dir)
        evaluation = Evaluation(applicable_evaluators(cfg.evaluators, cfg.prompt), cfg.prompt, run_dir,
                                cfg.trainer.eval_every, timer)
        if cfg.mode == "test":
            log.info("Re-rendering %s at step %d", run_dir, load_weights(system, ckpt))
        else:
            trainer = make_trainer(cfg, run_dir, device, timer, evaluation)
            data = torch.utils.data.DataLoader(StepIndices(), batch_size=None)
            trainer.fit(system, data, ckpt_path=str(ckpt) if ckpt else None)
            system.to(device)  # Lightning's teardown moves the module back to the CPU after fit
        return {**write_final_outputs(system, run_dir), "metrics": evaluation.finish(system)}
