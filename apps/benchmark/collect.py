"""Reading finished cells into tables: one result row per cell, one curve row per evaluation point,
and the per-method summary (means over prompts, then mean and spread over seeds)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from scorelift.jobs import wall_time
from .cells import cell_dir, cell_record, cell_state, is_finished
from .spec import Cell

QUALITY = ("iou", "colour_error", "identification")
RESULT_COLUMNS = (
    "method", "prompt", "seed", "status", *QUALITY, "final_loss", "median_s_per_it", "mean_s_per_it",
    "train_steps_s", "train_wall_s", "cell_wall_s", "peak_memory_mb", "peak_memory_kind", "device", "run_dir",
)
CURVE_COLUMNS = ("method", "prompt", "seed", "step", "train_s", *QUALITY, "loss")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_names(out: Path, cell: Cell) -> list[str]:
    """The stages of a finished cell whose run is staged (system=magic3d), in order; [] otherwise."""
    record = _read_json(cell_dir(out, cell) / "run" / "stages.json")
    return [s["name"] for s in record.get("stages", [])] if is_finished(out, cell) else []


def stage_results(out: Path, cell: Cell) -> list[dict]:
    """One row per stage of a staged cell, as method ``<method>/<stage>``: the stage's own quality
    and timing, beside the cell's own row (its last stage's quality, all stages' time)."""
    rows = []
    for name in stage_names(out, cell):
        run = cell_dir(out, cell) / "run" / name
        metrics, timing = _read_json(run / "metrics.json"), _read_json(run / "timing.json")
        peak = timing.get("peak_memory_bytes")
        rows.append({
            "method": f"{cell.method}/{name}", "prompt": cell.prompt, "seed": cell.seed, "status": "ok",
            **{k: metrics.get(k) for k in QUALITY}, "final_loss": timing.get("final_loss"),
            "median_s_per_it": timing.get("median_s_per_it"), "mean_s_per_it": timing.get("mean_s_per_it"),
            "train_steps_s": timing.get("train_steps_s"), "train_wall_s": timing.get("train_wall_s"),
            "peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
            "peak_memory_kind": timing.get("peak_memory_kind"), "device": timing.get("device"),
            "run_dir": str(run.relative_to(out)),
        })
    return rows


def cell_result(out: Path, cell: Cell) -> dict:
    folder = cell_dir(out, cell)
    row = {"method": cell.method, "prompt": cell.prompt, "seed": cell.seed}
    state = cell_state(out, cell)
    if state != "finished":
        failed = folder / "failed.json"
        row["status"] = {"stopped": "stopped (the next run resumes it)", "not run": "not run",
                         "failed": f"failed (exit {_read_json(failed).get('returncode')})"}[state]
        return row
    run = folder / "run"
    metrics, timing, record = _read_json(run / "metrics.json"), _read_json(run / "timing.json"), cell_record(out, cell)
    peak = timing.get("peak_memory_bytes")
    row.update(
        status="ok",
        **{k: metrics.get(k) for k in QUALITY},
        final_loss=timing.get("final_loss"),
        median_s_per_it=timing.get("median_s_per_it"),
        mean_s_per_it=timing.get("mean_s_per_it"),
        train_steps_s=timing.get("train_steps_s"),
        train_wall_s=timing.get("train_wall_s"),
        cell_wall_s=wall_time(record),
        peak_memory_mb=None if peak is None else round(peak / 2**20, 1),
        peak_memory_kind=timing.get("peak_memory_kind"),
        device=timing.get("device"),
        run_dir=str(run.relative_to(out)),
    )
    return row


def cell_curve(out: Path, cell: Cell) -> list[dict]:
    path = cell_dir(out, cell) / "run" / "eval_curve.csv"
    if not is_finished(out, cell) or not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{"method": cell.method, "prompt": cell.prompt, "seed": cell.seed, **r} for r in csv.DictReader(fh)]


def write_csv(path: Path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else math.nan


def summarize(rows: list[dict], methods: list[str], seeds: list[int]) -> list[dict]:
    """Per method: each quality metric averaged over prompts within a seed, then the mean, sample
    standard deviation and min/max of those per-seed means (the spread over seeds); cost columns
    are medians / maxima over cells. Only methods whose cells all finished get a complete row."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if r["status"] == "ok"]
        summary = {"method": method, "cells": len(mine), "finished": len(ok)}
        for key in QUALITY:
            per_seed = [_mean(r[key] for r in ok if r["seed"] == s) for s in seeds]
            per_seed = [v for v in per_seed if not math.isnan(v)]
            summary[key] = statistics.fmean(per_seed) if per_seed else math.nan
            summary[f"{key}_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0 if per_seed else math.nan
            summary[f"{key}_per_seed"] = per_seed
        its = [r["median_s_per_it"] for r in ok if r.get("median_s_per_it") is not None]
        summary["median_s_per_it"] = statistics.median(its) if its else math.nan
        summary["mean_train_steps_s"] = _mean(r.get("train_steps_s") for r in ok)
        summary["mean_cell_wall_s"] = _mean(r.get("cell_wall_s") for r in ok)
        peaks = [r["peak_memory_mb"] for r in ok if r.get("peak_memory_mb") is not None]
        summary["peak_memory_mb"] = max(peaks) if peaks else math.nan
        summary["peak_memory_kind"] = ok[0].get("peak_memory_kind") if ok else None
        summary["final_loss"] = _mean(r.get("final_loss") for r in ok)
        out.append(summary)
    return out


TARGET_IOU = 0.8  # the quality whose wall time the report gives (time to IoU 0.8)


def time_to_iou(curves: list[dict], target: float = TARGET_IOU) -> dict:
    """(method, prompt, seed) -> training seconds until the run's evaluation curve first reached IoU
    ``target`` (None: it never did), from the curve rows (CURVE_COLUMNS)."""
    first: dict = {}
    for r in sorted(curves, key=lambda r: float(r["step"])):
        key = (r["method"], r["prompt"], int(r["seed"]))
        first.setdefault(key, None)
        if first[key] is None and r.get("iou") not in (None, "") and float(r["iou"]) >= target:
            first[key] = float(r["train_s"])
    return first


def add_time_to_iou(summary: list[dict], curves: list[dict], target: float = TARGET_IOU) -> None:
    """Adds to each method's summary the median over its cells with a curve of the training time
    to IoU ``target`` (cells that never reach it count as infinitely slow, so the median is nan
    unless more than half reach it: with exactly half, the middle pair holds an infinity) and how
    many cells reached it."""
    times = time_to_iou(curves, target)
    for s in summary:
        mine = [t for (m, _, _), t in times.items() if m == s["method"]]
        reached = sorted(t for t in mine if t is not None)
        s["time_to_iou_s"] = statistics.median(reached + [math.inf] * (len(mine) - len(reached))) if mine else math.nan
        if math.isinf(s["time_to_iou_s"]):
            s["time_to_iou_s"] = math.nan
        s["reached_iou"] = f"{len(reached)}/{len(mine)}"


def per_prompt(rows: list[dict], methods: list[str], prompts: list[str]) -> list[dict]:
    """Mean over seeds of each quality metric, per method x prompt."""
    table = []
    for prompt in prompts:
        for method in methods:
            ok = [r for r in rows if r["method"] == method and r["prompt"] == prompt and r["status"] == "ok"]
            table.append({"prompt": prompt, "method": method, "n": len(ok), **{k: _mean(r[k] for r in ok) for k in QUALITY}})
    return table


def mean_curves(curves: list[dict], methods: list[str], seeds: list[int]) -> dict:
    """method -> {step: {metric: [per-seed mean over prompts], "train_s": mean}} from the curve rows."""
    result: dict = {}
    for method in methods:
        steps = sorted({int(r["step"]) for r in curves if r["method"] == method})
        per_step = {}
        for step in steps:
            at = [r for r in curves if r["method"] == method and int(r["step"]) == step]
            entry = {"train_s": _mean(r["train_s"] for r in at)}
            for key in QUALITY:
                entry[key] = [v for v in (_mean(r[key] for r in at if int(r["seed"]) == s) for s in seeds) if not math.isnan(v)]
            per_step[step] = entry
        result[method] = per_step
    return result
