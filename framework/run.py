"""One run: build the parts from a checked config, then create the run directory, train / re-render / export, write outputs.

A run holds its directory's lock (``run_lock``) while it writes, stops cleanly on the stop
signals (``stop_signals``: checkpoint, then exit 75), keeps its last checkpoints and its logs
across resumes (``outputs.checkpoint``, ``outputs.logs``), refuses to start on a volume that
cannot hold it (``disk_space``) and turns a write that still finds no space into one paragraph
(exit 74) with the last good checkpoint intact."""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from . import registry
from .atomic import write_text_atomic
from .checks import ResumePoint, check_inputs, resume_checkpoint
from .console import LOG_FORMAT
from .disk_space import check_disk_space, free_bytes
from .errors import ConfigError, RunStopped, RunWriteError
from .init_from import start_from
from .library.splat_ply import write_ply
from .library_noise import quiet_known_library_noise
from .outputs.checkpoint import (
    CheckpointKeeper,
    DirectCheckpointIO,
    checkpoint_dir,
    checkpoint_path,
    no_space_error,
    read_step,
    remove_dead_writers_files,
    set_aside,
)
from .outputs.logs import ResumableCSVLogger, tensorboard_logger
from .outputs.final import Preview, ValidationImages, write_final_outputs
from .outputs.graceful_stop import GracefulStop
from .outputs.mesh import export_mesh
from .outputs.progress import StepProgressBar
from .outputs.evaluation import Evaluation, applicable_evaluators
from .outputs.timing import StepTimer
from .plan import RunPlan
from .run_info import append_invocation, record_end, write_run_info
from .run_lock import RunLock
from .stop_signals import StopSignals
from .units import human_bytes

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


@contextlib.contextmanager
def run_log(run_dir: Path, only_if_it_succeeds: bool = False):
    """Copy every log record of the run into ``run_dir/launch.log`` (appended on resume).
    ``only_if_it_succeeds``: held in memory and appended when the block ends without an error (a
    re-render or export that fails leaves the run's log as it was; the console shows it all)."""
    if only_if_it_succeeds:
        handler = logging.handlers.BufferingHandler(capacity=1 << 30)
    else:
        handler = logging.FileHandler(run_dir / "launch.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
        if only_if_it_succeeds:
            root.removeHandler(handler)
            with open(run_dir / "launch.log", "a") as out:
                out.writelines(logging.Formatter(LOG_FORMAT).format(r) + "\n" for r in handler.buffer)
    finally:
        root.removeHandler(handler)
        handler.close()


def build_system(plan: RunPlan):
    """The prior and the system of ``plan``, on its device: each part built from its parsed,
    checked config (``PartPlan.build``); nothing is parsed or checked again."""
    prior = plan.prior.build(plan.device, fast_path=plan.fast_path)
    system_cls = registry.find("system", plan.system.name)  # imports a deferred one's module
    return system_cls(plan, prior).to(plan.device)  # a system is built from the whole plan


def make_trainer(cfg: DictConfig, run_dir: Path, device: torch.device, timer: StepTimer, evaluation: Evaluation,
                 keeper: CheckpointKeeper, graceful: GracefulStop, resume_step: int = 0) -> pl.Trainer:
    """Lightning's Trainer for one run on ``device``: loggers to ``<run>/logs/metrics.csv`` and
    ``<run>/tensorboard/`` (continued on resume from ``resume_step``), scorelift's callbacks, and
    the Lightning options of the trainer section (checked at start-up by ``check_trainer``:
    trainer.accelerator and trainer.devices only agree with ``device``, which places the run)."""
    from lightning_fabric.plugins.environments import LightningEnvironment

    from .trainer_options import lightning_precision

    return pl.Trainer(
        max_steps=cfg.trainer.max_steps,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=lightning_precision(cfg.trainer.precision),
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        gradient_clip_algorithm=cfg.trainer.gradient_clip_algorithm,
        # the CSV logger first: it is trainer.logger (the TensorBoard one is in trainer.loggers)
        logger=[ResumableCSVLogger(run_dir, resume_step), tensorboard_logger(run_dir, resume_step)],
        callbacks=[
            timer,  # first, so its step times exclude the evaluation, checkpoint and image writes
            evaluation,
            keeper,  # after the evaluation: a checkpoint of step k holds eval_curve.csv's row k
            ValidationImages(run_dir),
            Preview(run_dir, int(cfg.trainer.get("preview_every", 0))),
            *([StepProgressBar()] if cfg.trainer.progress_bar else []),
            *viewer_callbacks(cfg, run_dir, graceful.stop),
            graceful,  # last: a stop signal is acted on once the step's own outputs are written
        ],
        # A plain environment, also inside a SLURM job: Lightning's SLURM one would answer SIGUSR1
        # with its own requeue and SIGTERM with its own exit; the stop signals are scorelift's.
        plugins=[LightningEnvironment(), DirectCheckpointIO()],
        enable_checkpointing=False,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=bool(cfg.deterministic),  # also cudnn.benchmark off and cuBLAS's fixed workspace
        default_root_dir=str(run_dir),
    )


def viewer_callbacks(cfg: DictConfig, run_dir: Path, stop) -> list:
    """The live viewer's callback where ``viewer.enabled`` (viser imported only then)."""
    if not OmegaConf.select(cfg, "viewer.enabled"):
        return []
    from .outputs.live_viewer import LiveViewer
    from .viewer import check_viewer_config

    return [LiveViewer(check_viewer_config(cfg.viewer), f"scorelift: {Path(run_dir).name}", stop)]


def load_weights(system, ckpt: Path) -> int:
    """Load a checkpoint's weights (and guidance state) into ``system``; returns its global step."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    system.on_load_checkpoint(state)
    system.load_state_dict(state["state_dict"])
    return int(state.get("global_step", 0))


def write_failed(exc: OSError, run_dir: Path) -> RunWriteError:
    """One paragraph for a write that found no space (other than a checkpoint's, which says its own)."""
    last = checkpoint_path(run_dir)
    try:
        kept = f"The last checkpoint (checkpoints/last.ckpt, step {read_step(last)}) is intact: free space and resume " \
               f"with `scorelift resume={run_dir}`."
    except Exception:  # noqa: BLE001  (none yet, or unreadable)
        kept = "No checkpoint was written yet."
    what = f"Writing {exc.filename!s}" if exc.filename else "A write of the run"
    why = "the file-size limit of this process (ulimit -f)" if exc.errno == errno.EFBIG else "no space left on the device"
    free, volume = free_bytes(run_dir)
    return RunWriteError(f"{what} failed: {why} ({human_bytes(free)} free on {volume}). {kept}")


def log_start_notes(removed: list[Path], point: ResumePoint | None, set_aside_as: list[Path]) -> None:
    """What a start found and did about it, into the console and launch.log."""
    for path in removed:
        log.warning("Removed %s, the temporary file of a writer that died mid-write.", path)
    if point is not None:
        for (path, why), moved in zip(point.skipped, set_aside_as):
            log.warning("Skipped the damaged checkpoint %s (%s); kept as %s.", path, why, moved.name)
        if point.skipped and point.path is not None:
            log.warning("Resuming from %s (step %d) instead: the steps after it are trained again.", point.path, point.step)
        if point.path is None:
            log.warning("The run stopped before its first checkpoint: starting it again from step 0.")
    for failure in registry.load_failures():
        log.warning("%s", failure)


def train(cfg, settings, system, run_dir: Path, device, stop: StopSignals, point: ResumePoint | None, timer,
          evaluation) -> int:
    """Fit ``system`` with the trainer ``settings`` (the plan's); returns the final global step.
    RunStopped after a stop signal (checkpoint written), RunWriteError when the disk filled up
    (last good checkpoint intact)."""
    keeper = CheckpointKeeper(run_dir, settings.checkpoint_every, settings.keep_checkpoints)
    graceful = GracefulStop(stop, keeper)
    resume_step = point.step if point is not None else 0
    trainer = make_trainer(cfg, run_dir, device, timer, evaluation, keeper, graceful, resume_step)
    data = torch.utils.data.DataLoader(StepIndices(), batch_size=None)
    trainer.fit(system, data, ckpt_path=str(point.path) if point is not None and point.path else None)
    system.to(device)  # Lightning's teardown moves the module back to the CPU after fit
    if graceful.stopped_at is not None:
        raise stop.stopped(run_dir, graceful.stopped_at, f"checkpoints/last.ckpt holds step {graceful.stopped_at}.")
    return int(trainer.global_step)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, plan: RunPlan | None = None) -> dict:
    """Train (mode=train, resuming from ``cfg.resume``), re-render (mode=test) or export a mesh
    (mode=export) into ``run_dir``.

    Order: check the config into the run's plan (unless the caller did: ``plan``), take the run directory's lock
    if it exists, build the prior and the system, check the disk space, and only then create
    ``run_dir`` and write into it, so a run that cannot start writes nothing. The stop signals
    (``trainer.stop_signals``) stop training cleanly (``RunStopped``, exit code 75).
    ``overrides``: the command line that composed ``cfg``, saved for ``resume=``.
    """
    quiet_known_library_noise()
    run_dir = Path(run_dir)
    if plan is None:
        plan = check_inputs(cfg, run_dir)
    signals = plan.trainer.stop_signals if cfg.mode == "train" else []
    with contextlib.ExitStack() as held:
        stop = held.enter_context(StopSignals(signals))
        existed = run_dir.is_dir()
        removed: list[Path] = []
        if existed:  # a resume (or re-render): one writer at a time, and what dead writers left goes
            held.enter_context(RunLock(run_dir))
            removed = remove_dead_writers_files(run_dir)
        check_writable(run_dir)
        device = plan.device
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        point = resume_checkpoint(cfg, run_dir)  # a checkpoint in mode test/export: check_resume saw to that
        if cfg.deterministic:
            # cuBLAS reads this when its first handle is made, which may happen while the prior is built
            # (before Lightning, which sets it too, starts).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        system = build_system(plan)
        started_from = None
        if cfg.mode == "train" and point is None and plan.init_from is not None:
            started_from = start_from(system, plan.init_from)  # the first step of a run started from another
        if cfg.mode == "train":
            check_disk_space(cfg, system, run_dir, point.step if point is not None else 0)
        if stop.requested:
            raise stop.stopped(run_dir, None, "it had not started training, and nothing was written.")

        run_dir.mkdir(parents=True, exist_ok=True)
        if not existed:
            held.enter_context(RunLock(run_dir))
        moved = set_aside([path for path, _ in point.skipped if path.parent == checkpoint_dir(run_dir)]) if point else []
        # A re-render or an export reads a run: the run's config, saved overrides (which resume=
        # re-applies) and history stay those of its training; a finished one adds a line to the
        # history and its log lines to launch.log, a failed one neither.
        training = cfg.mode == "train"
        if training:
            write_start_files(cfg, run_dir, overrides, device)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with run_log(run_dir, only_if_it_succeeds=not training):
            log.info("Run directory: %s", run_dir)
            if started_from:
                log.info("%s", started_from)
            log_start_notes(removed, point, moved)
            if not training:
                result = run_mode(cfg, plan, system, run_dir, stop, point)
                append_invocation(run_dir, cfg.mode, device, started)
                return result
            try:
                return run_mode(cfg, plan, system, run_dir, stop, point)
            except RunStopped as exc:
                record_end(run_dir, "stopped", signal=stop.name, message=str(exc))
                raise
            except (KeyboardInterrupt, SystemExit):  # Ctrl+C twice (Lightning turns it into exit 1)
                record_end(run_dir, "interrupted")
                raise
            except BaseException as exc:
                full = no_space_error(exc)
                if full is None:
                    record_end(run_dir, "failed", message=f"{type(exc).__name__}: {exc}")
                    raise
                error = exc if isinstance(exc, RunWriteError) else write_failed(full, run_dir)
                log.error("%s", error)
                record_end(run_dir, "write failed", message=str(error))
                raise error from None


def run_mode(cfg, plan: RunPlan, system, run_dir: Path, stop: StopSignals, point: ResumePoint | None) -> dict:
    """The run's mode, in its run directory: train then write the final outputs, re-render, or
    export; returns what was written."""
    if cfg.mode == "export":
        log.info("Exporting the mesh of %s at step %d", run_dir, load_weights(system, point.path))
        result = {"mesh": export_mesh(system, cfg.export, run_dir)}
        if getattr(system.geometry, "kind", "field") == "gaussians":
            result["splats"] = write_ply(system.geometry, run_dir / "splats" / "splats.ply")
            log.info("Splats: %d Gaussians -> %s", result["splats"]["n_gaussians"], result["splats"]["path"])
        return result
    timer = StepTimer(run_dir)
    evaluation = Evaluation(applicable_evaluators(cfg.evaluators, cfg.evaluate_as), cfg.evaluate_as, run_dir,
                            cfg.trainer.eval_every, timer)
    if cfg.mode == "test":
        step = load_weights(system, point.path)
        log.info("Re-rendering %s at step %d", run_dir, step)
    else:
        step = train(cfg, plan.trainer, system, run_dir, plan.device, stop, point, timer, evaluation)
    not_yet = f"training is done (checkpoints/last.ckpt holds step {step}) but the final outputs were not written; resuming writes them."
    if stop.requested:
        raise stop.stopped(run_dir, step, not_yet)
    outputs = write_final_outputs(system, run_dir)
    if stop.requested:
        raise stop.stopped(run_dir, step, not_yet)
    result = {**outputs, "metrics": evaluation.finish(system)}
    if cfg.mode == "train":  # (a re-render's line is added by run(), once it has succeeded)
        record_end(run_dir, "finished", step=step)
    return result
