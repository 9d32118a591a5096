"""Evaluator: scores a run against a ground truth it knows for some prompts.

The core knows no ground truth: an application (the shapes world) registers an evaluator, and a
run whose prompt it ``applies_to`` is scored by it through the ``Evaluation`` callback; a run on
any other prompt goes without. ``evaluators: [...]`` in the run config names the ones to try.
"""

from __future__ import annotations

from pathlib import Path

from .base import BasePart


class Evaluator(BasePart):
    """Measures a trained system (geometry + renderer) against ground truth.

    ``metrics`` names the numbers ``measure`` returns, in order: they are the columns of the
    run's ``eval_curve.csv`` and the keys of its ``metrics.json``.
    """

    metrics: tuple[str, ...] = ()

    def applies_to(self, prompt: str) -> bool:
        """True when this evaluator has ground truth for ``prompt``."""
        raise NotImplementedError

    def measure(self, system, prompt: str) -> dict[str, float]:
        """Render ``system`` as the evaluation needs and score it: {metric name: value}. Called
        every ``trainer.eval_every`` steps (so it should take well under a second) and at the end."""
        raise NotImplementedError

    def write(self, system, prompt: str, run_dir: Path) -> dict:
        """The final evaluation: write what a reader can look at (evaluation views) under
        ``run_dir`` and return the metrics (merged into ``metrics.json``). Default: ``measure``."""
        return self.measure(system, prompt)
