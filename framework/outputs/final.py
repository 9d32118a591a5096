"""What a finished run writes: the turntable video and grid; validation images during training."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from .images import make_grid, write_png, write_video

log = logging.getLogger(__name__)


def write_turntable(system, run_dir: Path) -> dict[str, Path]:
    """turntable.mp4 (all frames), grid.png (8 evenly spaced frames, 4 x 2) and
    turntable_strip.png (the same 8 frames in one row, for the benchmark's contact sheet)."""
    v = system.cfg.views
    rgb, _ = system.render_images(system.view_cameras(v.n_frames))
    video = write_video(run_dir / "turntable.mp4", rgb, fps=v.fps)
    step = max(1, v.n_frames // 8)
    grid, strip = run_dir / "grid.png", run_dir / "turntable_strip.png"
    write_png(grid, make_grid(rgb[::step][:8], n_cols=4))
    write_png(strip, make_grid(rgb[::step][:8], n_cols=8))
    return {"video": video, "grid": grid, "strip": strip}


def write_final_outputs(system, run_dir: Path) -> dict:
    """What every finished run writes for a reader (the evaluation, where a ground truth applies,
    is the Evaluation callback's)."""
    return write_turntable(system, run_dir)


class ValidationImages(pl.Callback):
    """Every ``system.cfg.validation_every`` steps: validation/step_XXXXXX.png of fixed views (top
    row) and their opacity (bottom row), and the same grid as image ``validation`` in every
    TensorBoard logger of the trainer."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "validation"

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        every = system.cfg.validation_every
        step = trainer.global_step
        if every <= 0 or step % every != 0:
            return
        rgb, alpha = system.render_images(system.view_cameras(system.cfg.n_validation_views))
        if alpha.shape[-1] != rgb.shape[-1]:
            alpha = torch.nn.functional.interpolate(alpha, size=rgb.shape[-2:], mode="nearest")
        tiles = torch.cat([rgb, alpha.expand(-1, 3, -1, -1)])
        grid = make_grid(tiles, n_cols=rgb.shape[0])
        write_png(self.dir / f"step_{step:06d}.png", grid)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("validation", grid.float().clamp(0, 1), global_step=step, dataformats="CHW")


PREVIEW_VIEWS = 4
PREVIEW_TILE = 160  # pixels: small renders are scaled up (nearest) so the preview reads at a glance


class Preview(pl.Callback):
    """``<run>/preview.png``: the object as it is now, from PREVIEW_VIEWS fixed views around it,
    written when training starts and every ``every`` steps, atomically (an image viewer that keeps
    the file open reloads a whole image, never half of one). The renders are the validation
    images' (``render_images``: eval mode, no random draws), so a run with previews trains exactly
    as one without."""

    def __init__(self, run_dir: Path, every: int):
        self.path = Path(run_dir) / "preview.png"
        self.every = every

    def on_train_start(self, trainer, system) -> None:
        if self.every > 0:
            self.write(system)

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0:
            self.write(system)

    def write(self, system) -> None:
        rgb, _ = system.render_images(system.view_cameras(PREVIEW_VIEWS))  # [V, 3, h, w] in [0, 1]
        scale = max(1, PREVIEW_TILE // rgb.shape[-1])
        tiles = rgb.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        write_png(self.path, make_grid(tiles, n_cols=PREVIEW_VIEWS))  # atomic
