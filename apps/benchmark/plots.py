"""The benchmark's figures (matplotlib, Agg backend) and the contact sheet of turntable frames.

Each quality figure has three panels: IoU and identification (higher is better) and colour error
(lower is better). Lines are the mean over seeds of each seed's mean over prompts; the band spans
the lowest to the highest seed, so its width is the spread over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path


LABELS = {"iou": "IoU (higher is better)", "identification": "identification (higher is better)",
          "colour_error": "colour error (lower is better)"}
PANELS = ("iou", "identification", "colour_error")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _colours(methods: list[str]) -> dict[str, str]:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def quality_curves(curves: dict, methods: list[str], path: Path, x: str) -> Path | None:
    """x = "step" (quality vs optimizer step) or "train_s" (quality vs seconds of training)."""
    if not any(curves.get(m) for m in methods):
        return None
    plt = _pyplot()
    colours = _colours(methods)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key in zip(axes, PANELS):
        for method in methods:
            points = sorted(curves.get(method, {}).items())
            points = [(s, e) for s, e in points if e[key]]
            if not points:
                continue
            xs = [s if x == "step" else e["train_s"] for s, e in points]
            mean = [sum(e[key]) / len(e[key]) for _, e in points]
            ax.plot(xs, mean, label=method, color=colours[method], lw=1.8)
            ax.fill_between(xs, [min(e[key]) for _, e in points], [max(e[key]) for _, e in points],
                            color=colours[method], alpha=0.18, lw=0)
        ax.set_title(LABELS[key], fontsize=10)
        ax.set_xlabel("optimizer step" if x == "step" else "training time per run (s)")
        ax.grid(alpha=0.3)
        if key != "colour_error":
            ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=9)
    fig.suptitle("quality vs " + ("step" if x == "step" else "training time") + " (mean over prompts; band: min-max over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def method_bars(summary: list[dict], path: Path) -> Path | None:
    """Final quality per method (bar: mean over seeds, error bar: standard deviation over seeds,
    dots: each seed) and the median seconds per step."""
    rows = [s for s in summary if s["finished"]]
    if not rows:
        return None
    plt = _pyplot()
    colours = _colours([s["method"] for s in summary])
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    names = [s["method"] for s in rows]
    for ax, key in zip(axes, PANELS):
        means = [s[key] for s in rows]
        stds = [s[f"{key}_std"] for s in rows]
        ax.bar(names, means, yerr=stds, capsize=4, color=[colours[n] for n in names], alpha=0.8)
        for i, s in enumerate(rows):
            seeds = s[f"{key}_per_seed"]
            ax.scatter([i] * len(seeds), seeds, color="black", s=12, zorder=3)
        ax.set_title(LABELS[key], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    its = [s["median_s_per_it"] for s in rows]
    axes[3].bar(names, [0 if math.isnan(v) else v for v in its], color=[colours[n] for n in names], alpha=0.8)
    axes[3].set_title("median seconds per step (lower is better)", fontsize=10)
    axes[3].grid(axis="y", alpha=0.3)
    fig.suptitle("final quality per method (bar: mean over seeds; error bar: std over seeds; dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_png(image, path: Path, limit: int | None = None) -> Path:
    """``image`` as an optimised PNG; where that is over ``limit`` bytes, as a 256-colour one (median-cut
    palette, Floyd-Steinberg dithered, else undithered where that alone fits): renders of a few
    colours each lose little, and a sheet of many turntables stays small enough to commit."""
    from PIL import Image

    image.save(path, optimize=True)
    if limit is None or path.stat().st_size <= limit:
        return path
    palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.convert("RGB").quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    if path.stat().st_size > limit:
        palette.save(path, optimize=True)
    return path


def contact_sheet(strips: dict[tuple[str, str], Path], methods: list[str], prompts: list[str], path: Path,
                  limit: int | None = None) -> Path | None:
    """One row per prompt x method: the 8 turntable frames of that cell (the first seed), labelled;
    a 256-colour PNG where the lossless one is over ``limit`` bytes (see save_png)."""
    from PIL import Image, ImageDraw

    cells = [(p, m) for p in prompts for m in methods if (m, p) in strips]
    if not cells:
        return None
    images = {(p, m): Image.open(strips[(m, p)]).convert("RGB") for p, m in cells}
    label_w = 230
    width = label_w + max(im.width for im in images.values())
    heights = [images[c].height for c in cells]
    sheet = Image.new("RGB", (width, sum(heights) + 4 * len(cells)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for (prompt, method), h in zip(cells, heights):
        sheet.paste(images[(prompt, method)], (label_w, y))
        draw.text((6, y + h // 2 - 12), prompt, fill="black")
        draw.text((6, y + h // 2 + 2), method, fill="#444444")
        y += h + 4
    return save_png(sheet, path, limit)
