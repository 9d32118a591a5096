"""What a finished run writes: turntable video and grid, and (shapes world) evaluation views + metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from framework.data.cameras import evaluation_cameras
from framework.outputs.images import make_grid, write_png, write_video

log = logging.getLogger(__name__)

EVAL_RESOLUTION = 64  # the shapes world's evaluation images are 64 x 64


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


def render_evaluation_views(system) -> tuple[torch.Tensor, torch.Tensor]:
    """rgb [8, 3, 64, 64] and opacity [8, 1, 64, 64] at the shapes world's evaluation cameras.

    Latent geometry: latents rendered at the prior's latent size are decoded by the VAE (the
    finest latent render the decoder maps to 64 pixels); opacity is rendered at full resolution.
    """
    cams = evaluation_cameras(EVAL_RESOLUTION)
    if system.is_latent:
        rgb, _ = system.render_images(cams.with_resolution(system.prior.latent_size))
        _, alpha = system.render_images(cams)
    else:
        rgb, alpha = system.render_images(cams)
    if rgb.shape[-1] != EVAL_RESOLUTION:
        rgb = torch.nn.functional.interpolate(rgb, size=EVAL_RESOLUTION, mode="bilinear", antialias=True, align_corners=False)
    return rgb.clamp(0, 1), alpha.clamp(0, 1)


def write_evaluation(system, run_dir: Path) -> dict | None:
    """eval/view_k.png, eval/alpha_k.png and metrics.json for shapes-world prompts; None otherwise."""
    from framework.shapes_world import evaluate as shapes_eval
    from framework.shapes_world.world import parse_prompt

    if parse_prompt(system.prompt) is None:
        log.info("Prompt %r is not in the shapes world: no ground-truth evaluation.", system.prompt)
        return None
    rgb, alpha = render_evaluation_views(system)
    shapes_eval.write_eval_views(run_dir, rgb, alpha)
    return shapes_eval.evaluate_run_dir(run_dir)


def write_final_outputs(system, run_dir: Path) -> dict:
    paths = write_turntable(system, run_dir)
    metrics = write_evaluation(system, run_dir)
    if metrics is not None:
        log.info("Evaluation: %s", json.dumps({k: metrics[k] for k in ("iou", "colour_error", "identification")}))
    return {**paths, "metrics": metrics}


class ValidationImages(pl.Callback):
    """Every ``system.cfg.validation_every`` steps: validation/step_XXXXXX.png of fixed views."""

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
        write_png(self.dir / f"step_{step:06d}.png", make_grid(tiles, n_cols=rgb.shape[0]))
