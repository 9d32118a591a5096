"""Will the run fit on its volume? An estimate of what a training run writes, checked before it
writes anything.

What a run writes, and how each part is estimated (bytes):

- checkpoints: the system's state (every tensor of its state_dict and of the guidance's state)
  plus the optimizer's state for each trainable parameter (``optim.state_slots``: 2 for the Adam
  family, 1 for SGD with momentum), times ``trainer.keep_checkpoints`` + 1 (the new file is written beside the
  ones kept before the oldest is removed). A resume counts the checkpoints already there.
- validation images: ``max_steps / validation_every`` PNG grids of 2 x n_validation_views tiles,
  at their raw RGB size (a PNG is at most about that), twice (the PNG and TensorBoard's copy).
- the turntable: grid.png and turntable_strip.png at raw size and turntable.mp4 at a tenth of
  its raw frames (H.264 at imageio's default quality stays well below that).
- logs and small files: metrics.csv and TensorBoard scalars, ~64 bytes per logged value, and
  1 MiB for config, run_info, launch.log, eval images and metrics.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError
from .outputs.checkpoint_files import candidates
from .systems.optim import state_slots
from .units import human_bytes

SMALL_FILES = 1 << 20
BYTES_PER_LOGGED_VALUE = 64
VIDEO_FRACTION = 0.1


@dataclass
class WriteEstimate:
    checkpoint: int  # one checkpoint file
    checkpoints: int  # the most checkpoint bytes on disk at once, beyond what is there already
    images: int
    turntable: int
    logs: int

    @property
    def total(self) -> int:
        return self.checkpoints + self.images + self.turntable + self.logs


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def checkpoint_bytes(system) -> int:
    """One checkpoint of ``system`` (a ScoreDistillationSystem-like module with ``guidance`` and
    ``cfg.optimizer``): its state, the guidance's state and the optimizer's moments."""
    trainable = sum(p.numel() * p.element_size() for p in system.parameters() if p.requires_grad)
    guidance = getattr(system, "guidance", None)
    guidance_state = tensor_bytes(guidance.state_dict()) if guidance is not None else 0
    guidance_trainable = 0
    if guidance is not None and hasattr(guidance, "parameters"):
        guidance_trainable = sum(p.numel() * p.element_size() for p in guidance.parameters() if p.requires_grad)
    slots = state_slots(system.cfg.optimizer.name, dict(system.cfg.optimizer.args))
    return tensor_bytes(system.state_dict()) + guidance_state + slots * (trainable + guidance_trainable) + (64 << 10)


def image_side(system, resolution: int) -> int:
    """Pixels per side of a viewable render: latents are decoded to the prior's pixel size."""
    if getattr(system, "is_latent", False):
        return int(getattr(system.prior, "pixel_size", resolution * 8))
    return int(resolution)


def estimate_writes(cfg, system, run_dir: Path, resume_step: int = 0) -> WriteEstimate:
    """What a training run of ``cfg`` with ``system`` will still write into ``run_dir``."""
    one = checkpoint_bytes(system)
    keep = int(cfg.trainer.keep_checkpoints)
    existing = len(candidates(run_dir)) if resume_step else 0
    files_at_once = max(1, keep + 1 - existing)
    steps_left = max(0, int(cfg.trainer.max_steps) - resume_step)
    views = system.cfg.views
    every = int(system.cfg.validation_every)
    side = image_side(system, int(views.resolution))
    tile = side * side * 3
    n_images = steps_left // every if every > 0 else 0
    images = 2 * n_images * 2 * int(system.cfg.n_validation_views) * tile
    turntable = 2 * 8 * tile + int(VIDEO_FRACTION * int(views.n_frames) * tile)
    logged_steps = steps_left // max(1, int(cfg.trainer.log_every_n_steps))
    logs = 2 * logged_steps * 16 * BYTES_PER_LOGGED_VALUE + SMALL_FILES
    return WriteEstimate(one, files_at_once * one, images, turntable, logs)


def free_bytes(path: Path) -> tuple[int, Path]:
    """Free bytes on the volume that holds ``path`` (or would: its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


def file_size_limit() -> int | None:
    """This process's limit on the size of a file it writes (``ulimit -f``), or None."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def check_disk_space(cfg, system, run_dir: Path, resume_step: int = 0) -> WriteEstimate:
    """ConfigError (one paragraph, before anything is written) when the run's volume cannot
    hold what the run will write, or a checkpoint is larger than the file-size limit; returns
    the estimate."""
    estimate = estimate_writes(cfg, system, run_dir, resume_step)
    limit = file_size_limit()
    if limit is not None and estimate.checkpoint > limit:
        raise ConfigError(
            f"A checkpoint of this run takes about {human_bytes(estimate.checkpoint)}, but this process may write "
            f"files of at most {human_bytes(limit)} (its file-size limit, `ulimit -f`). Raise the limit "
            f"(`ulimit -f unlimited`) or make the geometry smaller."
        )
    free, volume = free_bytes(run_dir)
    if estimate.total > free:
        keep = int(cfg.trainer.keep_checkpoints)
        raise ConfigError(
            f"The run would write about {human_bytes(estimate.total)} into {str(run_dir)!r}, but the volume holding "
            f"it ({volume}) has only {human_bytes(free)} free. The estimate: {human_bytes(estimate.checkpoints)} of "
            f"checkpoints ({human_bytes(estimate.checkpoint)} each; trainer.keep_checkpoints={keep} are kept, plus "
            f"the one being written), {human_bytes(estimate.images)} of validation images, "
            f"{human_bytes(estimate.turntable)} for the turntable and {human_bytes(estimate.logs)} of logs. Free "
            f"space, write elsewhere (hydra.run.dir=... or output_root=...), keep fewer checkpoints "
            f"(trainer.keep_checkpoints=1) or write fewer images (system.validation_every=0 turns them off)."
        )
    return estimate
