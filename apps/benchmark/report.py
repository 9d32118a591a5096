"""The benchmark's report: results.csv, curves.csv, report.md, PNG figures and report.html, which
links its figures (beside it) and the first seed's turntables (animated WebP in report_files/, at the
size the page shows) by relative paths: the folder opens from disk, and no file in it is large
(FILE_LIMIT), so results can be committed as they are."""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path
from urllib.parse import quote

from . import collect, plots
from .cells import cell_dir
from .spec import BenchmarkSpec, Cell

FIGURES = {
    "quality_vs_step.png": "Quality vs optimizer step",
    "quality_vs_time.png": "Quality vs training time",
    "method_bars.png": "Final quality and cost per method",
    "contact_sheet.png": "Turntable frames per prompt and method (first seed)",
}
REPORT_FILES = "report_files"  # report.html's turntables, beside it
# Bytes: what a report's images stay under (results are committed). The contact sheet is stored as
# a 256-colour PNG when the lossless one is larger; turntables are WebP at the size shown.
FILE_LIMIT = 1_000_000


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pm(summary: dict, key: str) -> str:
    if math.isnan(summary[key]):
        return "–"
    return f"{summary[key]:.3f} ± {summary[f'{key}_std']:.3f}"


def summary_table(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "IoU", "identification", "colour error", "median s/it", "step time per run (s)", "wall time per run (s)",
              "peak memory (MiB)", "final loss", "cells"]
    rows = [
        [s["method"], _pm(s, "iou"), _pm(s, "identification"), _pm(s, "colour_error"), _fmt(s["median_s_per_it"], 4),
         _fmt(s["mean_train_steps_s"], 1), _fmt(s["mean_cell_wall_s"], 1), _fmt(s["peak_memory_mb"], 0), _fmt(s["final_loss"], 4),
         f"{s['finished']}/{s['cells']}"]
        for s in summary
    ]
    if any(s.get("reached_iou") for s in summary):  # the runs kept an evaluation curve (eval_every > 0)
        header.insert(4, f"time to IoU {collect.TARGET_IOU:g} (s)")
        for s, row in zip(summary, rows):
            row.insert(4, f"{_fmt(s.get('time_to_iou_s', math.nan), 1)} ({s.get('reached_iou', '–')})")
    return header, rows


def prompt_table(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["prompt", "method", "IoU", "identification", "colour error", "seeds"]
    return header, [[t["prompt"], t["method"], _fmt(t["iou"]), _fmt(t["identification"]), _fmt(t["colour_error"]), str(t["n"])] for t in table]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def gpu_summary(path: Path) -> dict | None:
    """Mean / median / max GPU utilisation over the samples taken while cells ran."""
    if not path.is_file():
        return None
    values = []
    for line in path.read_text().splitlines()[1:]:
        parts = line.split(",")
        if len(parts) == 4:
            try:
                values.append(float(parts[2]))
            except ValueError:
                pass
    if not values:
        return None
    values.sort()
    return {"samples": len(values), "mean_pct": sum(values) / len(values), "median_pct": values[len(values) // 2],
            "max_pct": values[-1]}


def _wall_time(info: dict) -> str:
    """The run's wall time. A benchmark run in several invocations (one per seed slice, when a
    machine limits how long one command may run) lists them under ``slices``: the total is their sum."""
    at_once = f"{info.get('workers', '?')} at a time, MPS {info.get('mps', 'off')}"
    slices = info.get("slices")
    if slices:
        parts = ", ".join(f"seeds {part['seeds']}: {_fmt(part['wall_s'], 0)} s" for part in slices)
        total = sum(part["wall_s"] for part in slices)
        return (f"wall time {_fmt(total, 0)} s in {len(slices)} invocations ({parts}; "
                f"{info.get('cells_run', '?')} cells, {at_once}).")
    return (f"wall time of the last invocation {_fmt(info.get('wall_s'), 0)} s "
            f"(cells run then: {info.get('cells_run', '?')}, {at_once}).")


def info_lines(info: dict, gpu: dict | None) -> list[str]:
    lines = [
        f"Command: `{info.get('command', '?')}`",
        f"Machine: {info.get('machine', '?')}",
        f"Versions: {', '.join(f'{k} {v}' for k, v in info.get('versions', {}).items())}",
        f"Git commit: {info.get('git_commit', '?')}; finished {info.get('finished', '?')}; {_wall_time(info)}",
    ]
    if gpu:
        lines.append(f"GPU utilisation while cells ran (nvidia-smi, {gpu['samples']} samples): mean {gpu['mean_pct']:.0f} %, "
                     f"median {gpu['median_pct']:.0f} %, max {gpu['max_pct']:.0f} %.")
    return lines


def href(path: str) -> str:
    """A relative link, quoted for a URL and for an HTML attribute (the pages are opened from disk)."""
    return html.escape(quote(path), quote=True)


def _shrink(frame, size: int):
    """A frame at no more than ``size`` pixels a side, by an integer factor and box filter (a
    turntable upscaled by nearest neighbour comes back to its pixels; the page shows ``size``)."""
    from PIL import Image

    factor = math.ceil(max(frame.size) / size)
    if factor <= 1:
        return frame
    return frame.resize((max(1, frame.width // factor), max(1, frame.height // factor)), Image.Resampling.BOX)


def _turntable_frames(run: Path) -> tuple[list, int] | None:
    """The run's turntable frames (RGB PIL images) and the time per frame in ms: from its GIF, else
    from its mp4 (read through imageio-ffmpeg); None where there is neither, or the mp4 can't be read."""
    from PIL import Image, ImageSequence

    gif, mp4 = run / "turntable.gif", run / "turntable.mp4"
    if gif.is_file():
        im = Image.open(gif)
        return [f.convert("RGB") for f in ImageSequence.Iterator(im)], int(im.info.get("duration", 62))
    if mp4.is_file():
        try:
            import imageio

            with imageio.get_reader(mp4) as reader:
                fps = reader.get_meta_data().get("fps") or 20
                frames = [Image.fromarray(f).convert("RGB") for f in reader]
        except Exception:  # no ffmpeg here: the caller links the mp4 itself
            return None
        return frames, round(1000 / fps)
    return None


def write_webp(frames: list, duration: int, path: Path, size: int) -> Path:
    """Frames as one animated WebP (quality 90, about a quarter of a GIF's bytes) at no more than
    ``size`` pixels a side."""
    frames = [_shrink(f, size) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="WEBP", save_all=True, append_images=frames[1:], loop=0, duration=duration,
                   quality=90, method=6)
    return path


def turntable_html(out: Path, run: Path, name: str, folder: str, size: int = 160) -> str:
    """A run's turntable, written to ``<out>/<folder>/<name>.<ext>`` and linked from the page (whose
    folder is ``out``): an animated WebP of its frames at the size shown or the render's own size,
    whichever is smaller; its mp4 (with its first
    frame as poster) or GIF copied as it is where this machine can't read the mp4 or write WebP;
    a dash where the run has no turntable."""
    from PIL import Image, features

    mp4, gif, strip = run / "turntable.mp4", run / "turntable.gif", run / "turntable_strip.png"
    if not (mp4.is_file() or gif.is_file()):
        return "–"
    rel = f"{folder}/{name}"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    if (out / f"{rel}.webp").is_file():  # a cell the page shows twice (claims sharing it): written once
        return f"<img width='{size}' height='{size}' alt='turntable' src='{href(rel + '.webp')}'>"
    frames = _turntable_frames(run) if features.check("webp") else None
    if frames:
        # The strip holds the frames at the render's own size (the mp4 is upscaled for players); the
        # page scales them up pixelated, so no more pixels than those are kept.
        native = Image.open(strip).height if strip.is_file() else size
        write_webp(*frames, out / f"{rel}.webp", min(size, native))
        return f"<img width='{size}' height='{size}' alt='turntable' src='{href(rel + '.webp')}'>"
    if mp4.is_file():
        poster = ""
        if strip.is_file():
            im = Image.open(strip).convert("RGB")
            im.crop((0, 0, im.height, im.height)).save(out / f"{rel}.png", optimize=True)
            poster = f" poster='{href(rel + '.png')}'"
        shutil.copyfile(mp4, out / f"{rel}.mp4")
        return (f"<video width='{size}' height='{size}' autoplay loop muted playsinline{poster} "
                f"src='{href(rel + '.mp4')}'></video>")
    shutil.copyfile(gif, out / f"{rel}.gif")
    return f"<img width='{size}' height='{size}' alt='turntable' src='{href(rel + '.gif')}'>"


def fresh_folder(path: Path) -> None:
    """Empty the page's own folder of files before writing it again (no turntable of a cell left out stays)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def video_grid(out: Path, spec: BenchmarkSpec, cells: list[Cell], folder: str = REPORT_FILES) -> str:
    """An HTML table: rows prompts, columns methods, each the first seed's turntable (linked files in ``folder``)."""
    seed = spec.seeds[0]
    by_key = {(c.method, c.prompt): c for c in cells if c.seed == seed}
    head = "<th>prompt</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in spec.methods)
    rows = []
    for prompt in spec.prompts:
        tds = [f"<td>{html.escape(prompt)}</td>"]
        for method in spec.methods:
            cell = by_key[(method, prompt)]
            tds.append(f"<td>{turntable_html(out, cell_dir(out, cell) / 'run', cell.key, folder)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table class='videos'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 12px 0 24px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
table.videos td { text-align: center; padding: 2px; }
table.videos img, table.videos video { image-rendering: pixelated; }
img.figure { max-width: 100%; border: 1px solid #eee; margin: 8px 0 20px; }
code { background: #f4f4f4; padding: 1px 4px; }
"""


def write_report(out: Path, spec: BenchmarkSpec, cells: list[Cell], info: dict) -> dict:
    """Every output file of the benchmark from the cells finished so far; returns the summary."""
    rows = [collect.cell_result(out, c) for c in cells]
    # a staged method (system=magic3d) also gets a row per stage, as "<method>/<stage>", after its own
    stage_rows = [r for c in cells for r in collect.stage_results(out, c)]
    rows += stage_rows
    curve_rows = [r for c in cells for r in collect.cell_curve(out, c)]
    collect.write_csv(out / "results.csv", rows, collect.RESULT_COLUMNS)
    collect.write_csv(out / "curves.csv", curve_rows, collect.CURVE_COLUMNS)
    methods = []
    for method in spec.methods:
        methods += [method, *dict.fromkeys(r["method"] for r in stage_rows if r["method"].startswith(method + "/"))]
    summary = collect.summarize(rows, methods, spec.seeds)
    table = collect.per_prompt(rows, methods, spec.prompts)
    curves = collect.mean_curves(curve_rows, methods, spec.seeds)
    if curve_rows:
        collect.add_time_to_iou(summary, curve_rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    figures = {
        "quality_vs_step.png": plots.quality_curves(curves, methods, out / "quality_vs_step.png", "step"),
        "quality_vs_time.png": plots.quality_curves(curves, methods, out / "quality_vs_time.png", "train_s"),
        "method_bars.png": plots.method_bars(summary, out / "method_bars.png"),
    }
    first_seed = spec.seeds[0]
    strips = {
        (c.method, c.prompt): cell_dir(out, c) / "run" / "turntable_strip.png"
        for c, row in zip(cells, rows)
        if c.seed == first_seed and row["status"] == "ok" and (cell_dir(out, c) / "run" / "turntable_strip.png").is_file()
    }
    for c in cells:  # each stage's own turntable beside the staged method's (its last stage's)
        for name in (collect.stage_names(out, c) if c.seed == first_seed else []):
            strip = cell_dir(out, c) / "run" / name / "turntable_strip.png"
            if strip.is_file():
                strips[(f"{c.method}/{name}", c.prompt)] = strip
    figures["contact_sheet.png"] = plots.contact_sheet(strips, methods, spec.prompts, out / "contact_sheet.png", FILE_LIMIT)

    gpu = gpu_summary(out / "gpu_util.csv")
    s_header, s_rows = summary_table(summary)
    p_header, p_rows = prompt_table(table)
    failed = [r for r in rows if r["status"] != "ok"]
    title = f"scorelift benchmark `{spec.name}`"
    explain = (
        f"{len(spec.methods)} methods x {len(spec.prompts)} prompts x {len(spec.seeds)} seeds "
        f"({', '.join(map(str, spec.seeds))}), {spec.steps} optimizer steps for every method. Quality: each "
        f"metric is averaged over the prompts within a seed; the table gives the mean ± sample standard deviation "
        f"of those per-seed means. s/it is the median over cells of each run's median step time; step time is the "
        f"sum of a run's optimizer steps and wall time the whole process (start, evaluations, outputs); memory is the "
        f"largest peak over cells ({summary[0].get('peak_memory_kind') or '–'}). Final loss: mean total loss of "
        f"the last 50 steps. Time to IoU {collect.TARGET_IOU:g} (where the runs kept an evaluation curve): the median "
        f"over cells of the training seconds until the curve first reached it, a cell that never did counting as "
        f"slowest (no median when fewer than half did), with the cells that reached it. {spec.description}"
    )
    md = [f"# {title}", "", explain, "", *[f"- {line}" for line in info_lines(info, gpu)], "",
          "## Methods", "", markdown_table(s_header, s_rows), ""]
    if failed:
        md += ["Unfinished cells: " + "; ".join(f"{r['method']} / {r['prompt']} / seed {r['seed']}: {r['status']}" for r in failed), ""]
    md += ["## Per prompt (mean over seeds)", "", markdown_table(p_header, p_rows), "", "## Figures", ""]
    md += [f"![{caption}]({name})" for name, caption in FIGURES.items() if figures.get(name)]
    md += ["", "## How each method ran", "", f"Common overrides: `{' '.join(spec.common) or '(none)'}`", ""]
    md += [f"- `{m}`: `{' '.join(o)}`" for m, o in spec.methods.items()]
    (out / "report.md").write_text("\n".join(md) + "\n")

    body = [f"<h1>{html.escape(title.replace('`', ''))}</h1>", f"<p>{html.escape(explain)}</p>",
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in info_lines(info, gpu)) + "</ul>",
            "<h2>Methods</h2>", html_table(s_header, s_rows)]
    if failed:
        body.append(f"<p><b>Unfinished cells:</b> {len(failed)}</p>")
    fresh_folder(out / REPORT_FILES)
    body += ["<h2>Turntables (first seed)</h2>", video_grid(out, spec, cells), "<h2>Figures</h2>"]
    body += [f"<h3>{html.escape(caption)}</h3><a href='{href(name)}'><img class='figure' alt='{name}' src='{href(name)}'></a>"
             for name, caption in FIGURES.items() if figures.get(name)]
    body += ["<h2>Per prompt (mean over seeds)</h2>", html_table(p_header, p_rows), "<h2>How each method ran</h2>",
             f"<p>Common overrides: <code>{html.escape(' '.join(spec.common) or '(none)')}</code></p><ul>"
             + "".join(f"<li><b>{html.escape(m)}</b>: <code>{html.escape(' '.join(o))}</code></li>" for m, o in spec.methods.items())
             + "</ul>"]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title.replace('`', ''))}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    (out / "report.html").write_text(page)
    return {"summary": summary, "rows": rows, "figures": figures}
