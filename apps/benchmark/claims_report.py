"""The claims report: claims.json (every number), claims.md and claims.html (per claim: its sentence,
verdict, the parts' effects and intervals, a figure, and the turntable of one representative cell per
arm), written from the cells finished so far. The page links its figures (beside it) and turntables
(animated WebP in claims_files/) by relative paths, as report.html does."""

from __future__ import annotations

import html
import json
import math
import statistics
import textwrap
from pathlib import Path

from scorelift.jobs import wall_time

from . import claim_values, verdict
from .claim_spec import Claim, Part, Plan
from .report import (CSS, _fmt, fresh_folder, href, html_table, info_lines, markdown_table,
                                        turntable_html)
from .cells import cell_dir, cell_record
from .spec import Cell

CLAIMS_FILES = "claims_files"  # claims.html's turntables, beside it

# Which way is better, for the figure's axis labels.
MEASURE_LABELS = {
    "iou": "IoU", "colour_error": "colour error", "identification": "identification", "floaters": "floaters",
    "oversaturation": "chroma minus true chroma", "sharpness_ratio": "edge sharpness / truth's",
    "centring_offset": "centroid offset (image widths)", "disconnected_mass": "disconnected mass",
    "iou_at_shared_time": "IoU at the shared training time", "geometry_spread": "geometry spread over seeds",
    "colour_spread": "colour spread over seeds",
}


def judge_part(out: Path, claim: Claim, part: Part, plan: Plan) -> dict:
    cells_a = plan.arms[(claim.name, part.benchmark, part.a)]
    cells_b = plan.arms[(claim.name, part.benchmark, part.b)] if part.b else []
    limit = claim_values.shared_time(out, [cells_a, cells_b]) if part.metric == "iou_at_shared_time" else None
    a = claim_values.unit_values(out, cells_a, part.metric, limit)
    b = claim_values.unit_values(out, cells_b, part.metric, limit) if part.b else None
    result = verdict.judge(part.expect, a, b, part.margin)
    return {
        "sentence": part.sentence, "benchmark": part.benchmark, "a": part.a, "b": part.b, "metric": part.metric,
        "expect": part.expect, "margin": part.margin, "verdict": result.verdict, "effect": result.effect,
        "low": result.low, "high": result.high, "units": result.units, "why": result.why,
        "mean_a": statistics.fmean(a.values()) if a else math.nan,
        "mean_b": statistics.fmean(b.values()) if b else math.nan,
        "shared_time_s": limit,
        "values_a": {_unit(k): v for k, v in a.items()},
        "values_b": {_unit(k): v for k, v in (b or {}).items()},
    }


def _unit(key) -> str:
    return f"{key[0]} / seed {key[1]}" if isinstance(key, tuple) else str(key)


def claim_cells(claim: Claim, plan: Plan) -> list:
    """The distinct cells a claim uses (shared cells count once here, and in every claim they serve)."""
    seen = {}
    for (name, _, _), cells in plan.arms.items():
        if name == claim.name:
            for c in cells:
                seen[(c.method, c.prompt, c.seed)] = c
    return list(seen.values())


def judge_claim(out: Path, claim: Claim, plan: Plan) -> dict:
    parts = [judge_part(out, claim, p, plan) for p in claim.parts]
    diagnosis = [judge_part(out, claim, p, plan) for p in claim.diagnosis]
    cells = claim_cells(claim, plan)
    records = [cell_record(out, c) for c in cells]
    finished = [r for r in records if r.get("status") == "ok"]
    return {
        "name": claim.name, "claim": claim.claim, "paper": claim.paper, "translation": claim.translation,
        "verdict": verdict.combine([p["verdict"] for p in parts]), "parts": parts, "diagnosis": diagnosis,
        "cells": len(cells), "finished": len(finished),
        "cell_wall_s": sum(wall_time(r) or 0.0 for r in finished),
    }


def representative(out: Path, cells: list, metric: str):
    """The finished cell of an arm whose value of ``metric`` is the median of the arm's (the lower
    middle one for an even count); the first finished cell where the measure is not per cell."""
    scored = []
    for c in cells:
        m = claim_values.cell_metrics(out, c)
        if m is not None:
            v = m.get(metric)
            scored.append((float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf, c))
    if not scored:
        return None
    scored.sort(key=lambda x: (x[0], x[1].prompt, x[1].seed))
    return scored[(len(scored) - 1) // 2][1]


def figure(result: dict, path: Path) -> Path | None:
    """One panel per part and diagnosis: each unit's value in arm a and b joined by a line (paired),
    the arms' means as bars; an at_most part shows arm a's values against its bound."""
    from .plots import _pyplot

    panels = result["parts"] + result["diagnosis"]
    if not any(p["values_a"] for p in panels):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        arms = [p["a"]] + ([p["b"]] if p["b"] else [])
        values = [p["values_a"]] + ([p["values_b"]] if p["b"] else [])
        for i, vals in enumerate(values):
            if vals:
                ax.bar(i, statistics.fmean(vals.values()), color="#cfd8e3", width=0.6)
        if p["b"]:
            for unit in p["values_a"].keys() & p["values_b"].keys():
                ax.plot([0, 1], [p["values_a"][unit], p["values_b"][unit]], color="#1f77b4", alpha=0.5, marker="o", ms=3)
        else:
            ax.plot([0] * len(p["values_a"]), list(p["values_a"].values()), "o", color="#1f77b4", ms=3)
            ax.axhline(p["margin"], color="#d62728", ls="--", lw=1)
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_ylabel(MEASURE_LABELS.get(p["metric"], p["metric"]), fontsize=8)
        effect = f"{_fmt(p['effect'])} [{_fmt(p['low'])}, {_fmt(p['high'])}]"
        ax.set_title("\n".join(textwrap.wrap(p["sentence"], 34)) + f"\n{p['verdict']}: {effect}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _effect(p: dict) -> str:
    what = "mean" if p["expect"] == "at_most" else "a - b"
    return f"{_fmt(p['effect'])} [{_fmt(p['low'])}, {_fmt(p['high'])}] ({what})"


def part_rows(parts: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["part", "measure", "arms (a vs b)", "expected", "effect [95 % interval]", "units", "verdict", "reading"]
    rows = []
    for p in parts:
        expected = {"greater": "a > b", "less": "a < b", "equal": f"|a - b| < {p['margin']:g}",
                    "at_most": f"mean a < {p['margin']:g}"}[p["expect"]]
        arms = p["a"] + (f" vs {p['b']}" if p["b"] else "")
        rows.append([p["sentence"], p["metric"], arms, expected, _effect(p), str(p["units"]), p["verdict"], p["why"]])
    return header, rows


def verdict_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["claim", "verdict", "parts (holds / does not / inconclusive)", "cells finished", "cell time (s)"]
    rows = []
    for r in results:
        counts = [sum(p["verdict"] == v for p in r["parts"]) for v in (verdict.HOLDS, verdict.FAILS, verdict.INCONCLUSIVE)]
        rows.append([r["name"], r["verdict"], " / ".join(map(str, counts)), f"{r['finished']}/{r['cells']}",
                     _fmt(r["cell_wall_s"], 0)])
    return header, rows


RULE = ("Rule (fixed before the runs): each part compares arm a with arm b on one measure, paired by unit ((prompt, "
        "seed), or prompt for the spreads across seeds); effect = mean of a - b; interval = 95 % percentile bootstrap "
        f"({verdict.BOOTSTRAP_RESAMPLES} resamples, seed {verdict.BOOTSTRAP_SEED}). A part holds when the interval lies on "
        "the claimed side of 0 (inside the margin for 'equal', below the bound for 'at most'), does not hold when it lies "
        f"wholly on the other side, and is inconclusive otherwise or with fewer than {verdict.MIN_UNITS} units. A claim "
        "holds when all its parts hold and does not hold when any part does not; diagnosis rows are findings, not verdicts.")


def write_claims_report(out: Path, claims: list[Claim], plan: Plan, info: dict) -> list[dict]:
    results = [judge_claim(out, c, plan) for c in claims]
    (out / "claims.json").write_text(json.dumps({"info": info, "claims": results}, indent=2, default=str))
    figures = {r["name"]: figure(r, out / f"claim_{r['name']}.png") for r in results}

    v_header, v_rows = verdict_rows(results)
    fresh_folder(out / CLAIMS_FILES)
    md = ["# Do the papers' claims hold? (scorelift, shapes world)", "", RULE, "",
          *[f"- {line}" for line in info_lines(info, None)], "", "## Verdicts", "", markdown_table(v_header, v_rows), ""]
    body = ["<h1>Do the papers' claims hold? (scorelift, shapes world)</h1>", f"<p>{html.escape(RULE)}</p>",
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in info_lines(info, None)) + "</ul>",
            "<h2>Verdicts</h2>", html_table(v_header, v_rows)]
    for claim, r in zip(claims, results):
        p_header, p_rows = part_rows(r["parts"])
        md += [f"## {r['name']}: {r['verdict']}", "", f"> {r['claim']}", "", f"Source: {r['paper']}.", "",
               f"On the shapes world: {r['translation']}", "", markdown_table(p_header, p_rows), ""]
        body += [f"<h2 id='{html.escape(r['name'])}'>{html.escape(r['name'])}: {html.escape(r['verdict'])}</h2>",
                 f"<blockquote>{html.escape(r['claim'])}</blockquote>", f"<p>Source: {html.escape(r['paper'])}.</p>",
                 f"<p>On the shapes world: {html.escape(r['translation'])}</p>", html_table(p_header, p_rows)]
        if r["diagnosis"]:
            d_header, d_rows = part_rows(r["diagnosis"])
            md += ["Diagnosis:", "", markdown_table(d_header, d_rows), ""]
            body += ["<h3>Diagnosis</h3>", html_table(d_header, d_rows)]
        if figures[r["name"]]:
            md += [f"![{r['name']}](claim_{r['name']}.png)", ""]
            link = href(figures[r["name"]].name)
            body.append(f"<a href='{link}'><img class='figure' alt='{html.escape(r['name'])}' src='{link}'></a>")
        body += ["<h3>One representative cell per arm (the median of the arm's first measured part)</h3>",
                 _arm_turntables(out, claim, plan)]
        md += ["Arms:", ""] + [f"- `{b}.{arm}`: `{' '.join(spec.common + overrides)}`"
                               for b, spec in claim.benchmarks.items() for arm, overrides in spec.methods.items()] + [""]
    (out / "claims.md").write_text("\n".join(md) + "\n")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>scorelift: do the papers' claims hold?</title>"
            f"<style>{CSS} blockquote {{ font-style: italic; }}</style></head><body>{''.join(body)}</body></html>")
    (out / "claims.html").write_text(page)
    return results


def arm_representatives(out: Path, claim: Claim, plan: Plan) -> list[tuple[str, Cell | None]]:
    """(label, representative cell or None) per arm of the claim, in the claim's order: the cell whose
    value of the benchmark's first measured per-cell part is the arm's median (IoU for the
    benchmarks whose measure is not per cell)."""
    chosen = []
    for bname, spec in claim.benchmarks.items():
        metric = next((p.metric for p in claim.parts + claim.diagnosis if p.benchmark == bname), "iou")
        metric = "iou" if metric in ("iou_at_shared_time", "geometry_spread", "colour_spread") else metric
        for arm in spec.methods:
            label = f"{bname}.{arm}" if len(claim.benchmarks) > 1 else arm
            chosen.append((label, representative(out, plan.arms[(claim.name, bname, arm)], metric)))
    return chosen


def _arm_turntables(out: Path, claim: Claim, plan: Plan) -> str:
    heads, cells = [], []
    for label, cell in arm_representatives(out, claim, plan):
        caption = "" if cell is None else f"<br><small>{html.escape(cell.prompt)}, seed {cell.seed}</small>"
        heads.append(f"<th>{html.escape(label)}</th>")
        cells.append("<td>–</td>" if cell is None else
                     f"<td>{turntable_html(out, cell_dir(out, cell) / 'run', cell.key, CLAIMS_FILES, 128)}{caption}</td>")
    return f"<table class='videos'><thead><tr>{''.join(heads)}</tr></thead><tbody><tr>{''.join(cells)}</tr></tbody></table>"
