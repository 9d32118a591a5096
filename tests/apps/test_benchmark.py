"""The benchmark end to end on its CI preset (2 prompts x 4 methods x 4 steps, CPU-sized), then
resume, determinism, selection and bad input. The numbers of 4-step runs say nothing about the
methods; what is checked is that every cell runs, is measured and reported, and repeats exactly."""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from scorelift.benchmark import cells as cells_mod
from scorelift.benchmark import spec as spec_mod
from scorelift.benchmark.collect import summarize
from scorelift.benchmark.report import FILE_LIMIT
from scorelift.errors import ConfigError

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "scorelift.benchmark", *args], capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"scorelift-bench {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def linked_files(page_path: Path, limit: int = FILE_LIMIT) -> list[Path]:
    """The files an HTML report links (src, href, poster), checked: nothing embedded (no data URI),
    every link relative to the page's folder (it opens from disk, fetches nothing), every file there
    and no larger than ``limit`` bytes."""
    page = page_path.read_text()
    assert "base64" not in page and "data:" not in page, f"{page_path} embeds data"
    files = []
    for _, link in re.findall(r"""\b(?:src|href|poster)=(["'])(.*?)\1""", page):
        assert not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|/|\.\./", link), f"{page_path}: {link} is not a link inside its folder"
        path = page_path.parent / unquote(html.unescape(link))
        assert path.is_file(), f"{page_path} links {link}, which is missing"
        assert path.stat().st_size <= limit, f"{path}: {path.stat().st_size} bytes"
        files.append(path)
    return files


def turntables(page_path: Path) -> list[str]:
    """The turntable elements of a report: animated images or videos."""
    return re.findall(r"<img [^>]*alt='turntable'|<video ", page_path.read_text())


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "ci"
    proc = bench("ci", "--out", str(out), "--workers", "2", "--threads-per-run", "1")
    return out, proc


def test_ci_preset_runs_every_cell_and_reports(ci_run):
    out, proc = ci_run
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["prompt"]) for r in rows] == [
        (m, p) for p in ("a red cube", "a blue sphere") for m in ("paas", "sds", "ssd", "vsd")
    ]
    for r in rows:
        assert r["status"] == "ok", r
        assert 0.0 <= float(r["iou"]) <= 1.0 and 0.0 <= float(r["identification"]) <= 1.0
        assert float(r["median_s_per_it"]) > 0 and float(r["train_steps_s"]) > 0
        assert float(r["cell_wall_s"]) > float(r["train_steps_s"])
        assert float(r["peak_memory_mb"]) > 100 and r["peak_memory_kind"] == "cpu_max_rss"
        assert r["final_loss"] not in ("", "nan")
    # quality every 2 steps: steps 0, 2, 4 for each of the 8 cells
    curves = read_csv(out / "curves.csv")
    assert len(curves) == 8 * 3
    assert sorted({int(c["step"]) for c in curves}) == [0, 2, 4]
    times = [float(c["train_s"]) for c in curves if c["method"] == "sds" and c["prompt"] == "a red cube"]
    assert times[0] == 0.0 and times[0] < times[1] < times[2]
    for name in ("quality_vs_step.png", "quality_vs_time.png", "method_bars.png", "contact_sheet.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "report.md").read_text()
    assert "| method | IoU | identification |" in md and "| vsd |" in md
    assert "scorelift-bench ci --out" in md and "torch 2.13.0" in md
    linked = linked_files(out / "report.html")
    assert {p.name for p in linked} >= {"quality_vs_step.png", "quality_vs_time.png", "method_bars.png", "contact_sheet.png"}
    assert len(turntables(out / "report.html")) == 8  # one turntable per method x prompt, the first seed's
    webps = sorted((out / "report_files").rglob("*.webp"))  # this environment reads mp4 and writes WebP
    assert len(webps) == 8 and set(webps) <= set(linked)
    assert (out / "report_files" / "sds" / "a_red_cube" / "s0.webp").is_file()
    info = json.loads((out / "benchmark_info.json").read_text())
    assert info["cells_run"] == 8 and info["preset"] == "ci"
    assert "8/8 cells finished" in proc.stdout


def test_rerun_resumes_without_running_finished_cells(ci_run):
    out, _ = ci_run
    before = read_csv(out / "results.csv")
    marker = out / "cells" / "sds" / "a_red_cube" / "s0" / "job.json"
    stamp = marker.stat().st_mtime_ns
    proc = bench("ci", "--out", str(out), "--workers", "2")
    assert "8 of 8 jobs already finished; running 0" in proc.stdout
    assert marker.stat().st_mtime_ns == stamp
    assert read_csv(out / "results.csv") == before
    # a cell whose run was lost (no job.json) runs again, from scratch
    (out / "cells" / "ssd" / "a_blue_sphere" / "s0" / "job.json").unlink()
    proc = bench("ci", "--out", str(out), "--methods", "ssd", "--prompts", "a blue sphere")
    assert "0 of 1 jobs already finished; running 1" in proc.stdout
    assert len(read_csv(out / "results.csv")) == 1  # the report covers the cells asked for...
    bench("ci", "--out", str(out), "--report-only")  # ...and --report-only brings back the whole table
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["prompt"], r["status"]) for r in rows] == [(r["method"], r["prompt"], "ok") for r in before]


def test_same_seed_same_numbers(ci_run, tmp_path):
    """A second benchmark of two cells reproduces the first's quality, curves and final loss exactly."""
    out, _ = ci_run
    bench("ci", "--out", str(tmp_path), "--methods", "sds,vsd", "--prompts", "a red cube", "--threads-per-run", "1")
    keys = ("iou", "colour_error", "identification", "final_loss")
    first = {r["method"]: r for r in read_csv(out / "results.csv") if r["prompt"] == "a red cube"}
    for r in read_csv(tmp_path / "results.csv"):
        assert {k: r[k] for k in keys} == {k: first[r["method"]][k] for k in keys}
        assert float(r["final_loss"]) != 0.0
    strip = lambda rows: [{k: v for k, v in c.items() if k != "train_s"} for c in rows if c["prompt"] == "a red cube" and c["method"] in ("sds", "vsd")]  # noqa: E731
    assert strip(read_csv(tmp_path / "curves.csv")) == strip(read_csv(out / "curves.csv"))


def test_summary_spread_over_seeds():
    rows = [
        {"method": "m", "prompt": p, "seed": s, "status": "ok", "iou": iou, "colour_error": 0.1, "identification": 1.0,
         "median_s_per_it": 0.5, "train_steps_s": 5.0, "cell_wall_s": 9.0, "peak_memory_mb": 10.0, "final_loss": 1.0}
        for (p, s, iou) in [("a", 0, 0.2), ("b", 0, 0.4), ("a", 1, 0.6), ("b", 1, 0.8)]
    ]
    (s,) = summarize(rows, ["m"], [0, 1])
    assert s["iou_per_seed"] == pytest.approx([0.3, 0.7])
    assert s["iou"] == pytest.approx(0.5)
    assert s["iou_std"] == pytest.approx(((0.2**2 + 0.2**2) / 1) ** 0.5)  # sample std of 0.3 and 0.7


def test_time_to_iou_is_the_median_over_cells_of_the_first_time_the_curve_reaches_it():
    from scorelift.benchmark.collect import add_time_to_iou

    def curve(method, prompt, points):
        return [{"method": method, "prompt": prompt, "seed": 0, "step": str(100 * (i + 1)), "train_s": str(t),
                 "iou": str(iou)} for i, (t, iou) in enumerate(points)]

    rows = (curve("a", "p1", [(10.0, 0.5), (20.0, 0.81), (30.0, 0.7)])  # first reaches 0.8 at 20 s
            + curve("a", "p2", [(12.0, 0.85), (24.0, 0.9)])  # at 12 s
            + curve("a", "p3", [(11.0, 0.2), (22.0, 0.79)])  # never
            + curve("b", "p1", [(5.0, 0.1)]) + curve("b", "p2", [(5.0, 0.2)]) + curve("b", "p3", [(5.0, 0.95)]))
    summary = [{"method": "a"}, {"method": "b"}]
    add_time_to_iou(summary, rows)
    assert summary[0]["time_to_iou_s"] == 20.0 and summary[0]["reached_iou"] == "2/3"  # median of 12, 20, never
    assert summary[1]["reached_iou"] == "1/3" and summary[1]["time_to_iou_s"] != summary[1]["time_to_iou_s"]  # nan


def test_bad_input_is_reported_clearly(tmp_path):
    proc = bench("nosuch", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "Benchmark preset 'nosuch' not found" in proc.stderr and "ci" in proc.stderr
    proc = bench("ci", "--out", str(tmp_path), "--methods", "sds,xyz", check=False)
    assert proc.returncode == 2 and "['xyz'] not in preset 'ci'" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: [a red cube]\nseeds: [0]\nsteps: 2\nmethods: {sds: [guidance=sds, seed=3]}\n")
    with pytest.raises(ConfigError, match=re.escape("'seed=3' is set by the benchmark itself")):
        spec_mod.load_spec(str(bad))
    bad.write_text("prompts: [a red cube]\nseed: [0]\nsteps: 2\nmethods: {}\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['seed'\], missing keys \['seeds'\]"):
        spec_mod.load_spec(str(bad))


def test_full_preset_covers_every_shape_and_colour():
    from scorelift.shapes_world.world import COLOURS, SHAPES, parse_prompt

    spec = spec_mod.load_spec("full")
    parsed = [parse_prompt(p) for p in spec.prompts]
    assert None not in parsed and len(set(parsed)) == len(parsed) >= 12
    assert {c for c, _ in parsed} == set(COLOURS) and {s for _, s in parsed} == set(SHAPES)
    assert len(spec.seeds) >= 3 and set(spec.methods) == {"paas", "sds", "ssd", "vsd"}
    cells = spec_mod.expand(spec)
    assert len(cells) == len(spec.prompts) * len(spec.seeds) * 4
    assert all(f"trainer.max_steps={spec.steps}" in c.overrides for c in cells)  # one budget for all


def test_prompt_without_ground_truth_reports_cost_and_turntables(tmp_path):
    """As on real Stable Diffusion: no metrics, but time, memory, contact sheet and videos."""
    preset = tmp_path / "nogt.yaml"
    preset.write_text(
        "prompts: [a DSLR photo of a hamburger]\nseeds: [0]\nsteps: 3\neval_every: 1\n"
        "common: [prior=tiny-random, system.views.n_frames=8]\n"
        "methods: {sds: [system=dreamfusion, guidance=sds], paas: [system=sjc, guidance=paas, data.height=16, data.width=16]}\n"
    )
    out = tmp_path / "out"
    bench(str(preset), "--out", str(out), "--workers", "2", "--threads-per-run", "1")
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["iou"] == "" and float(r["median_s_per_it"]) > 0 and float(r["peak_memory_mb"]) > 0 for r in rows)
    assert read_csv(out / "curves.csv") == []  # no ground truth, no quality curve
    assert (out / "contact_sheet.png").is_file() and not (out / "quality_vs_step.png").exists()
    md = (out / "report.md").read_text()
    assert re.search(r"\| sds \| – \| – \| – \| [0-9.]+ \|", md)
    assert len(turntables(out / "report.html")) == 2
    linked_files(out / "report.html")


def test_slowest_cells_start_first(tmp_path):
    """Longest-first order: the preset's relative_cost until cells are measured, then their times."""
    spec = spec_mod.load_spec("ci")
    spec.seeds = [0, 1]
    spec.relative_cost = {"vsd": 2.5}
    cells = spec_mod.expand(spec)
    order = cells_mod.schedule(cells, tmp_path, spec.relative_cost)
    assert [c.method for c in order[:4]] == ["vsd"] * 4
    assert order[4:] == [c for c in cells if c.method != "vsd"]  # ties keep the preset's order
    # measured: paas cells took 30 s, sds 10 s (one unit of hint = median of 30 and 10 = 20 s), so
    # unmeasured vsd counts 2.5 x 20 = 50 s and unmeasured ssd 20 s: vsd, paas, ssd, sds.
    for method, wall in [("paas", 30.0), ("sds", 10.0)]:
        folder = tmp_path / "cells" / method / "x" / "s0"
        folder.mkdir(parents=True)
        if method == "paas":
            (folder / "job.json").write_text(json.dumps({"method": method, "wall_s": wall}))
        else:  # the record of an earlier version's runner
            (folder / "cell.json").write_text(json.dumps({"method": method, "cell_wall_s": wall}))
    order = cells_mod.schedule(cells, tmp_path, spec.relative_cost)
    assert [c.method for c in order[::4]] == ["vsd", "paas", "ssd", "sds"]
    with pytest.raises(ConfigError, match="relative_cost xyz: 2.0 must name one of the preset's methods"):
        spec.relative_cost = {"xyz": 2.0}
        spec_mod.check_spec(spec)


def test_a_turntable_is_linked_as_an_animated_webp_at_the_size_shown(tmp_path):
    """Runs write a GIF (no ffmpeg) or an mp4 turntable; the report writes each as an animated WebP
    beside the page, every frame kept, no larger than the page shows it, and links it."""
    import imageio
    import numpy as np
    from PIL import Image

    from scorelift.benchmark.report import turntable_html

    rng = np.random.default_rng(0)
    small = tmp_path / "small" / "run"
    small.mkdir(parents=True)
    imageio.mimsave(small / "turntable.gif", [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)],
                    duration=60, loop=0)
    element = turntable_html(tmp_path, small, "m/a_red_cube/s0", "report_files", 160)
    assert element == "<img width='160' height='160' alt='turntable' src='report_files/m/a_red_cube/s0.webp'>"
    webp = Image.open(tmp_path / "report_files" / "m" / "a_red_cube" / "s0.webp")
    assert webp.format == "WEBP" and webp.n_frames == 5 and webp.size == (32, 32)

    big = tmp_path / "big" / "run"  # a render upscaled 4x by nearest neighbour (as the mp4 writer does)
    big.mkdir(parents=True)
    frames = [np.kron(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8)) for _ in range(6)]
    imageio.mimsave(big / "turntable.gif", frames, duration=50, loop=0)
    turntable_html(tmp_path, big, "m + n/a_red_cube/s1", "report_files", 160)  # a name quoted in the link
    webp = Image.open(tmp_path / "report_files" / "m + n" / "a_red_cube" / "s1.webp")
    assert webp.n_frames == 6 and webp.size == (128, 128)  # 256 px shown at 160: halved, not resampled unevenly
    Image.new("RGB", (8 * 64, 64)).save(big / "turntable_strip.png")  # the render's own size: 64 px
    turntable_html(tmp_path, big, "m/a_red_cube/s2", "report_files", 160)
    assert Image.open(tmp_path / "report_files" / "m" / "a_red_cube" / "s2.webp").size == (64, 64)
    assert turntable_html(tmp_path, tmp_path / "none", "m/x/s0", "report_files") == "–"


def test_a_contact_sheet_over_the_limit_is_stored_with_a_palette(tmp_path):
    import numpy as np
    from PIL import Image

    from scorelift.benchmark.plots import save_png

    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    assert save_png(noisy, tmp_path / "lossless.png").stat().st_size > 200_000
    assert Image.open(tmp_path / "lossless.png").mode == "RGB"
    path = save_png(noisy, tmp_path / "sheet.png", limit=200_000)
    assert path.stat().st_size <= 200_000 and Image.open(path).mode == "P"
    flat = Image.new("RGB", (300, 300), "white")  # under the limit: kept lossless
    assert Image.open(save_png(flat, tmp_path / "flat.png", limit=200_000)).mode == "RGB"


@pytest.mark.parametrize("page", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "benchmarks").rglob("*.html")))
def test_committed_reports_link_their_images_and_keep_them_small(page):
    linked_files(REPO / page)


def test_committed_images_are_small():
    images = [p for ext in ("png", "webp", "gif", "mp4", "jpg") for p in (REPO / "benchmarks").rglob(f"*.{ext}")]
    assert images and not [(str(p.relative_to(REPO)), p.stat().st_size) for p in images if p.stat().st_size > FILE_LIMIT]


def test_wall_time_of_a_benchmark_run_in_slices_is_their_sum():
    from scorelift.benchmark.report import info_lines

    info = {"cells_run": 144, "workers": 16, "mps": "on", "wall_s": 1174.4,
            "slices": [{"seeds": "0", "wall_s": 375.4}, {"seeds": "1", "wall_s": 397.1}, {"seeds": "2", "wall_s": 401.9}]}
    line = info_lines(info, None)[-1]
    assert "wall time 1174 s in 3 invocations (seeds 0: 375 s, seeds 1: 397 s, seeds 2: 402 s; 144 cells, 16 at a time, MPS on)." in line
    del info["slices"]
    assert "wall time of the last invocation 1174 s (cells run then: 144, 16 at a time, MPS on)." in info_lines(info, None)[-1]


def test_a_failed_cell_is_reported_with_its_log_and_re_run_only_when_asked(tmp_path):
    preset = tmp_path / "failing.yaml"
    preset.write_text(json.dumps({
        "description": "one cell whose run is refused at its start-up check", "prompts": ["a red cube"], "seeds": [0],
        "steps": 2, "eval_every": 0, "methods": {"broken": ["guidance=paas", "data.batch_size=0"]}, "common": []}))
    out = tmp_path / "out"
    first = bench(str(preset), "--out", str(out), check=False)
    log = out / "cells" / "broken" / "a_red_cube" / "s0" / "stdout.log"
    assert first.returncode == 1, first.stdout
    assert f"[1/1] broken | a red cube | seed 0: FAILED (exit 2, see {log})" in first.stdout, first.stdout
    assert "data.batch_size" in log.read_text()
    again = bench(str(preset), "--out", str(out), check=False)
    assert again.returncode == 1
    assert (f"1 job(s) failed earlier and are not run again (--retry-failed runs them): broken | a red cube | "
            f"seed 0: {log}") in again.stdout
    assert "0 of 1 jobs already finished; running 0" in again.stdout
    retried = bench(str(preset), "--out", str(out), "--retry-failed", check=False)
    assert retried.returncode == 1 and "running 1 with" in retried.stdout and "failed earlier" not in retried.stdout


def test_an_unconditional_preset_runs_prompt_less_cells_scored_as_its_target(tmp_path):
    """``unconditional: true``: each cell runs with prompt=null and is scored as the preset's prompt."""
    from tests.tiny_pixel_pipelines import build_ddpm

    model = build_ddpm(tmp_path / "ddpm")
    preset = tmp_path / "uncond.yaml"
    preset.write_text(
        "unconditional: true\nprompts: [a cube]\nseeds: [0]\nsteps: 3\n"
        f"common: [prior=diffusers-unet, 'prior.model={model}', system=dreamfusion, geometry.n_features=3, "
        "geometry.feature_activation=sigmoid, background.n_features=3, data.height=16, data.width=16, "
        "geometry.resolution=12, system.views.n_frames=8]\n"
        "methods: {sds: [guidance=sds]}\n"
    )
    cell = spec_mod.expand(spec_mod.load_spec(str(preset)))[0]
    assert cell.unconditional and cell.prompt_overrides() == ["prompt=null", "evaluate_as=a cube"]
    out = tmp_path / "out"
    bench(str(preset), "--out", str(out), "--threads-per-run", "1")
    (row,) = read_csv(out / "results.csv")
    assert row["status"] == "ok" and row["prompt"] == "a cube" and row["iou"] != ""  # scored as "a cube"
    info = json.loads(next(out.glob("cells/sds/*/s0/run/run_info.json")).read_text())
    assert info["prompt"] is None and info["evaluate_as"] == "a cube"
    metrics = json.loads(next(out.glob("cells/sds/*/s0/run/metrics.json")).read_text())
    assert metrics["shape"] == "cube" and metrics["colour"] in ("red", "orange", "yellow", "green", "blue", "purple")
