"""The shapes world as an evaluator of runs: prompts of the world are scored against its
analytic ground truth (mask IoU, colour error, identification; docs/shapes-world.md).

Registered with the core through the ``scorelift.plugins`` entry point (setup.py), like any
third-party part: the core never imports the shapes world.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scorelift import register
from scorelift.data.cameras import evaluation_cameras
from scorelift.interfaces.evaluator import Evaluator

EVAL_RESOLUTION = 64  # the world's evaluation images are 64 x 64


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


@register("evaluator", "shapes-world")
class ShapesWorldEvaluator(Evaluator):
    """Scores prompts 'a {colour} {shape}' of the shapes world against its analytic ground truth,
    and shape-only targets 'a {shape}' (any colour: the runs of an unconditional one-shape prior)."""

    # one line for `scorelift --list`
    summary = "Scores shapes-world prompts against their analytic ground truth (IoU, identification, sharpness)."

    metrics = ("iou", "colour_error", "identification")

    def applies_to(self, prompt: str) -> bool:
        from .evaluate import parse_target

        return parse_target(prompt) is not None

    def measure(self, system, prompt: str) -> dict[str, float]:
        from .evaluate import evaluate_views, parse_target

        rgb, alpha = render_evaluation_views(system)
        m = evaluate_views(rgb, alpha, *parse_target(prompt))
        return {key: m[key] for key in self.metrics}

    def write(self, system, prompt: str, run_dir: Path) -> dict:
        """eval/view_k.png and eval/alpha_k.png, then the metrics read back from those 8-bit files
        (``python -m scorelift.shapes_world.evaluate RUN_DIR`` gives the same view metrics later),
        with the geometry's disconnected_mass, which needs the density and not the views."""
        from . import claim_measures, evaluate

        rgb, alpha = render_evaluation_views(system)
        evaluate.write_eval_views(run_dir, rgb, alpha)
        extra = dict(disconnected_mass=claim_measures.disconnected_mass(system.geometry))
        return evaluate.evaluate_run_dir(run_dir, extra=extra)
