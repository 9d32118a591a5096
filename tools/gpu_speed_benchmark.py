"""GPU step time of every method, one run at a time on one GPU: the fast path's yardstick.

    python tools/gpu_speed_benchmark.py --sd /tmp/sd21 --out speed.json            # SD-shaped + shapes prior
    python tools/gpu_speed_benchmark.py --sd /tmp/sd21 --out off.json --set fast_path=false
    python tools/gpu_speed_benchmark.py --compare before.json after.json          # the ratio table

Each method trains ``--steps`` (default 100) optimizer steps through ``launch.py`` of ``--repo``
(default: this checkout), nothing else on the GPU. From the run's timing.json (every step timed
with CUDA synchronised) it takes the steps ``--from``..``--to`` (default 20..80): median, 10th and
90th percentile and their spread (p90 - p10) / median, and the peak memory, allocated and reserved.
The SD-shaped pipeline comes from tools/build_random_sd_pipeline.py (SD 2.1-base's shapes with
random fp16 weights: real times and memory, meaningless images). Writes ``--out`` (JSON, one row
per method) and prints a table; ``--compare A B`` prints B's times against A's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SD_METHODS = {
    "sjc paas": ["system=sjc", "guidance=paas"],
    "dreamfusion sds": ["system=dreamfusion", "guidance=sds"],
    "dreamfusion ssd": ["system=dreamfusion", "guidance=ssd"],
    "prolificdreamer": ["system=prolificdreamer"],
}
SHAPES_METHODS = {"shapes sjc paas": ["system=sjc", "guidance=paas"]}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated q-quantile (0..1) of ``values``."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def step_statistics(step_seconds: list[float], first: int, last: int) -> dict:
    """Median, p10, p90 (ms) and spread of steps ``first``..``last - 1``."""
    window = step_seconds[first:last]
    if not window:
        return {}
    median = statistics.median(window)
    p10, p90 = percentile(window, 0.1), percentile(window, 0.9)
    return {"steps_in_window": len(window), "median_ms": 1e3 * median, "p10_ms": 1e3 * p10, "p90_ms": 1e3 * p90,
            "spread": (p90 - p10) / median, "it_per_s": 1.0 / median}


def time_method(repo: Path, name: str, overrides: list[str], args, root: Path) -> dict:
    run_dir = root / name.replace(" ", "_")
    cmd = [sys.executable, str(repo / "launch.py"), *overrides, f"trainer.max_steps={args.steps}",
           "trainer.progress_bar=false", "system.views.n_frames=4", "evaluators=[]", f"hydra.run.dir={run_dir}",
           *args.set]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    row = {"method": name, "overrides": overrides + args.set, "returncode": proc.returncode,
           "process_wall_s": round(time.perf_counter() - start, 1)}
    timing = run_dir / "timing.json"
    if proc.returncode == 0 and timing.is_file():
        t = json.loads(timing.read_text())
        row.update(step_statistics(t.get("step_seconds", []), args.first, args.last))
        row["peak_allocated_gib"] = t["peak_memory_bytes"] / 2**30
        reserved = t.get("peak_reserved_bytes")
        row["peak_reserved_gib"] = reserved / 2**30 if reserved is not None else None
        row["device"] = t["device"]
    else:
        row["error_tail"] = (proc.stdout + proc.stderr)[-2000:]
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'method':<20} {'median ms':>9} {'it/s':>7} {'p10':>7} {'p90':>7} {'spread':>7} {'alloc GiB':>9} {'resv GiB':>9}")
    for r in rows:
        if "median_ms" not in r:
            print(f"{r['method']:<20} FAILED (exit {r['returncode']})")
            continue
        resv = f"{r['peak_reserved_gib']:9.2f}" if r.get("peak_reserved_gib") is not None else f"{'-':>9}"
        print(f"{r['method']:<20} {r['median_ms']:9.1f} {r['it_per_s']:7.1f} {r['p10_ms']:7.1f} {r['p90_ms']:7.1f} "
              f"{100 * r['spread']:6.0f}% {r['peak_allocated_gib']:9.2f} {resv}")


def compare(before: Path, after: Path) -> None:
    a = {r["method"]: r for r in json.loads(before.read_text())}
    b = {r["method"]: r for r in json.loads(after.read_text())}
    print(f"{'method':<20} {'before ms':>9} {'after ms':>9} {'speed-up':>8} {'alloc before':>12} {'alloc after':>11}")
    for name in [m for m in a if m in b]:
        x, y = a[name], b[name]
        if "median_ms" in x and "median_ms" in y:
            print(f"{name:<20} {x['median_ms']:9.1f} {y['median_ms']:9.1f} {x['median_ms'] / y['median_ms']:7.2f}x "
                  f"{x['peak_allocated_gib']:12.2f} {y['peak_allocated_gib']:11.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON file for the rows")
    ap.add_argument("--sd", help="an SD-format pipeline directory (tools/build_random_sd_pipeline.py)")
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose launch.py runs (default: this one)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--from", dest="first", type=int, default=20)
    ap.add_argument("--to", dest="last", type=int, default=80)
    ap.add_argument("--methods", default="", help="comma-separated subset of the method names")
    ap.add_argument("--set", nargs="*", default=[], help="overrides added to every run (e.g. fast_path=false)")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/gpu_speed_runs"))
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if not args.out:
        ap.error("--out is required unless --compare is given")
    todo = [(name, ov, []) for name, ov in SHAPES_METHODS.items()]
    if args.sd:
        todo += [(name, ov, ["prior=stable-diffusion", f"prior.model={args.sd}"]) for name, ov in SD_METHODS.items()]
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
    rows = []
    for name, overrides, prior in todo:
        if wanted and name not in wanted:
            continue
        row = time_method(args.repo.resolve(), name, overrides + prior, args, args.runs / args.repo.resolve().name)
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
