"""The values a claim's part compares, per unit, read from finished cells.

Cell measures come from each run's metrics.json (the shapes world's evaluator writes them); a unit
is (prompt, seed). ``iou_at_shared_time`` reads the run's evaluation curve instead: the IoU at its
last evaluation within a time both arms reached (the median over the faster arm's cells of their
total training time). Measures across seeds (diversity) are computed here from the evaluation
views of every finished seed of a prompt; a unit is then the prompt.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from .claim_spec import PROMPT_MEASURES
from .cells import cell_dir, is_finished
from .spec import Cell


def run_dir(out: Path, cell: Cell) -> Path:
    return cell_dir(out, cell) / "run"


def cell_metrics(out: Path, cell: Cell) -> dict | None:
    """metrics.json of a finished cell, or None."""
    path = run_dir(out, cell) / "metrics.json"
    if not is_finished(out, cell) or not path.is_file():
        return None
    return json.loads(path.read_text())


def eval_curve(out: Path, cell: Cell) -> list[dict]:
    """Rows of the run's eval_curve.csv as floats (step, train_s, iou, ...); [] without one."""
    path = run_dir(out, cell) / "eval_curve.csv"
    if not is_finished(out, cell) or not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _finished_time(out: Path, cell: Cell) -> float | None:
    curve = eval_curve(out, cell)
    return curve[-1]["train_s"] if curve else None


def shared_time(out: Path, arm_cells: list[list[Cell]]) -> float | None:
    """The median total training time of the faster arm: every arm's typical cell got that far."""
    medians = []
    for cells in arm_cells:
        times = [t for t in (_finished_time(out, c) for c in cells) if t is not None and math.isfinite(t)]
        if times:
            medians.append(statistics.median(times))
    return min(medians) if medians else None


def iou_at(curve: list[dict], seconds: float) -> float | None:
    """IoU at the last evaluation whose training time is at most ``seconds``."""
    within = [r for r in curve if r["train_s"] <= seconds + 1e-9]
    return within[-1]["iou"] if within else None


def unit_values(out: Path, cells: list[Cell], metric: str, time_limit: float | None = None) -> dict:
    """{unit: value} of one arm: unit (prompt, seed) for cell measures, prompt for the measures
    across seeds. Cells not finished, and measures a run did not write, are left out."""
    if metric in PROMPT_MEASURES:
        return _across_seeds(out, cells, metric)
    values = {}
    for cell in cells:
        if metric == "iou_at_shared_time":
            value = None if time_limit is None else iou_at(eval_curve(out, cell), time_limit)
        else:
            metrics = cell_metrics(out, cell)
            value = None if metrics is None else metrics.get(metric)
        if value is not None:
            values[(cell.prompt, cell.seed)] = float(value)
    return values


def _across_seeds(out: Path, cells: list[Cell], metric: str) -> dict:
    from scorelift.shapes_world import claim_measures
    from scorelift.shapes_world.evaluate import load_run_views

    by_prompt: dict[str, list] = {}
    for cell in cells:
        if cell_metrics(out, cell) is not None:
            by_prompt.setdefault(cell.prompt, []).append(load_run_views(run_dir(out, cell)))
    return {prompt: claim_measures.seed_diversity(views)[metric] for prompt, views in by_prompt.items() if len(views) > 1}
