"""The shapes world: 36 analytic objects with exact ground truth, the embedded prior's training
data, and the evaluator of generated objects and prior samples (see docs/shapes-world.md).

- ``world``: names, prompts, captions, the light;
- ``render``: ``render_ground_truth`` (batched analytic ray casting, CPU or CUDA);
- ``dataset``: ``sample_training_batch``, ``write_dataset``;
- ``evaluate``: ``evaluate_views``, ``evaluate_run_dir``, ``write_eval_views``, ``classify_samples``
  (also ``python -m scorelift.shapes_world.evaluate RUN_DIR...``).
"""

from .dataset import sample_training_batch, write_dataset
from .render import render_ground_truth, render_shading
from .world import (
    ALL_OBJECTS,
    BACKGROUND,
    COLOURS,
    LIGHT_DIR,
    SHAPES,
    VIEWS,
    VOCABULARY,
    caption,
    object_prompt,
    parse_prompt,
)

_EVALUATE = ("evaluate_views", "evaluate_run_dir", "write_eval_views", "classify_samples")


def __getattr__(name):
    # The evaluator is imported on first use, so `python -m scorelift.shapes_world.evaluate`
    # does not find its own module already imported by the package (runpy warns about that).
    if name in _EVALUATE:
        from . import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'scorelift.shapes_world' has no attribute {name!r}")


__all__ = [
    "ALL_OBJECTS", "BACKGROUND", "COLOURS", "LIGHT_DIR", "SHAPES", "VIEWS", "VOCABULARY",
    "caption", "object_prompt", "parse_prompt", "render_ground_truth", "render_shading",
    "sample_training_batch", "write_dataset", *_EVALUATE,
]
