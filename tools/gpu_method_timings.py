"""Seconds per step and peak memory of every method, one run at a time (nothing else on the GPU).

    python tools/gpu_method_timings.py --out timings.json                       # the shapes prior
    python tools/gpu_method_timings.py --out timings.json --sd /tmp/sd21        # + an SD pipeline dir

Each method runs ``--steps`` optimizer steps through launch.py; its timing.json gives the median
step time (first 5 steps excluded, CUDA synchronised) and the peak memory (CUDA max allocated).
Build an SD-2.1-base-shaped random pipeline with tools/build_random_sd_pipeline.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "sjc paas": ["system=sjc", "guidance=paas"],
    "dreamfusion sds": ["system=dreamfusion", "guidance=sds"],
    "dreamfusion ssd": ["system=dreamfusion", "guidance=ssd"],
    "dreamfusion vsd": ["system=dreamfusion", "guidance=vsd"],
    "prolificdreamer vsd (hash grid)": ["system=prolificdreamer"],
}


def timed_run(overrides: list[str], run_dir: Path) -> dict:
    """One launch.py run of ``overrides`` in ``run_dir``: its exit code and process time, and from
    its timing.json the median step time and peak memory (or the tail of its output if it failed)."""
    cmd = [sys.executable, str(REPO / "launch.py"), *overrides, "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    row = {"returncode": proc.returncode, "process_wall_s": round(time.perf_counter() - start, 1)}
    timing = run_dir / "timing.json"
    if proc.returncode == 0 and timing.is_file():
        t = json.loads(timing.read_text())
        row.update(median_s_per_it=t["median_s_per_it"], peak_memory_gib=t["peak_memory_bytes"] / 2**30,
                   peak_memory_kind=t["peak_memory_kind"], device=t["device"], steps_timed=t["steps_timed"],
                   train_wall_s=t.get("train_wall_s"))
    else:
        row["error_tail"] = (proc.stdout + proc.stderr)[-1500:]
    return row


def time_method(name: str, overrides: list[str], prior: list[str], steps: int, root: Path) -> dict:
    run_dir = root / name.replace(" ", "_").replace("(", "").replace(")", "")
    return {"method": name, "prior": " ".join(prior) or "prior=shapes",
            **timed_run([*overrides, *prior, f"trainer.max_steps={steps}", "system.views.n_frames=8"], run_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sd", help="a Stable-Diffusion-format pipeline directory to time as well")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--runs", default="/tmp/method_timings")
    args = ap.parse_args()
    priors = [[]] + ([["prior=stable-diffusion", f"prior.model={args.sd}"]] if args.sd else [])
    rows = []
    for prior in priors:
        for name, overrides in METHODS.items():
            row = time_method(name, overrides, prior, args.steps, Path(args.runs) / ("sd" if prior else "shapes"))
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"\n{'prior':<24} {'method':<34} {'s/it':>8} {'peak GiB':>9}")
    for r in rows:
        prior = "SD-shaped" if "stable-diffusion" in r["prior"] else "shapes"
        if "median_s_per_it" in r:
            print(f"{prior:<24} {r['method']:<34} {r['median_s_per_it']:8.4f} {r['peak_memory_gib']:9.2f}")
        else:
            print(f"{prior:<24} {r['method']:<34} FAILED (exit {r['returncode']})")


if __name__ == "__main__":
    main()
