"""Run a grid of launch.py variants x prompts x seeds in parallel processes; tabulate metrics.

    python tools/sweep.py spec.json --out sweeps/x --workers 8

spec.json: {"variants": {"name": ["override", ...], ...}, "prompts": [...], "seeds": [0],
"common": ["override", ...]}. Finished cells (metrics.json present) are not run again. Writes
results.csv (one row per cell) and prints mean IoU / colour error / identification per variant.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from framework.resolvers import slugify  # noqa: E402


def run_cell(out: Path, variant: str, overrides: list[str], prompt: str, seed: int, env: dict, run: bool = True) -> dict:
    run_dir = out / variant / f"{slugify(prompt)}-s{seed}"
    metrics = run_dir / "metrics.json"
    if not metrics.is_file() and run:
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(REPO / "launch.py"), *overrides, f"prompt={prompt}", f"seed={seed}",
               f"hydra.run.dir={run_dir}", "trainer.progress_bar=false"]
        start = time.perf_counter()
        with open(run_dir / "stdout.log", "w") as log:
            # a cache per cell: concurrent runs must not write the evaluator's cache files at once
            cell_env = {**env, "SCORELIFT_CACHE": str(run_dir / ".cache")}
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=cell_env, cwd=REPO)
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not metrics.is_file():
            return {"variant": variant, "prompt": prompt, "seed": seed, "status": f"failed ({proc.returncode})"}
        (run_dir / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    if not metrics.is_file():
        return {"variant": variant, "prompt": prompt, "seed": seed, "status": "not run"}
    m = json.loads(metrics.read_text())
    wall_file = run_dir / "wall_seconds.txt"
    timing_file = run_dir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    return {
        "variant": variant, "prompt": prompt, "seed": seed, "status": "ok",
        "iou": m["iou"], "colour_error": m["colour_error"], "identification": m["identification"],
        "wall_s": float(wall_file.read_text()) if wall_file.is_file() else None,
        "s_per_it": timing.get("median_s_per_it"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-run", type=int, default=1)
    ap.add_argument("--no-run", action="store_true", help="only tabulate the cells already finished")
    args = ap.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_run), "MKL_NUM_THREADS": str(args.threads_per_run)}
    cells = [
        (name, spec.get("common", []) + overrides, prompt, seed)
        for name, overrides in spec["variants"].items()
        for prompt in spec["prompts"]
        for seed in spec.get("seeds", [0])
    ]
    with ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(lambda c: run_cell(out, *c, env=env, run=not args.no_run), cells))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["variant", "prompt", "seed", "status", "iou", "colour_error", "identification", "wall_s", "s_per_it"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'variant':<28} {'n':>3} {'IoU':>6} {'colErr':>7} {'ident':>6} {'wall_s':>7}")
    for name in spec["variants"]:
        ok = [r for r in rows if r["variant"] == name and r["status"] == "ok"]
        if not ok:
            print(f"{name:<28} all failed")
            continue
        mean = lambda k: sum(r[k] for r in ok) / len(ok)  # noqa: E731
        walls = [r["wall_s"] for r in ok if r["wall_s"]]
        print(f"{name:<28} {len(ok):>3} {mean('iou'):6.3f} {mean('colour_error'):7.3f} {mean('identification'):6.3f} "
              f"{(sum(walls) / len(walls) if walls else float('nan')):7.1f}")
        for r in ok:
            print(f"    {r['prompt']:<22} s{r['seed']} IoU {r['iou']:.3f} col {r['colour_error']:.3f} id {r['identification']:.3f}")


if __name__ == "__main__":
    main()
