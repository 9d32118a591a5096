"""``python benchmark.py PRESET --out DIR``: run (or resume) a benchmark preset and write its report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from scorelift.benchmark import report, runner, spec as spec_mod
from scorelift.errors import ScoreliftError
from scorelift.run_info import git_commit, package_versions

EPILOG = """examples:
  python benchmark.py ci --out outputs/bench-ci                      # the small preset CI runs
  python benchmark.py full --out benchmarks/shapes-full --workers 16 # 12 prompts x 4 methods x 3 seeds (GPU)
  python benchmark.py full --out outputs/bench --methods sds,ssd --seeds 0
  python benchmark.py full --out benchmarks/shapes-full --report-only  # re-tabulate finished cells
  python benchmark.py ci --out outputs/bench-ci --set device=cpu      # extra launch.py overrides for every cell
Run the same command again to resume: finished cells are kept, the rest run."""


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{platform.system()} {platform.machine()}, {os.cpu_count()} logical CPUs ({cpu})"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            text += ", GPU: " + ", ".join(names) + f" (CUDA {torch.version.cuda})"
        else:
            text += ", no GPU"
    except Exception:  # a broken CUDA setup must not stop the report
        pass
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scorelift-bench", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help=f"a preset name ({', '.join(spec_mod.preset_names())}) or a YAML file")
    ap.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    ap.add_argument("--workers", type=int, default=1, help="cells run at once (default 1)")
    ap.add_argument("--threads-per-run", type=int, default=None,
                    help="CPU threads per cell (default: CPU count / workers, at least 1)")
    ap.add_argument("--methods", help="comma-separated subset of the preset's methods")
    ap.add_argument("--seeds", help="comma-separated seeds instead of the preset's")
    ap.add_argument("--prompts", help="comma-separated prompts instead of the preset's")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra launch.py overrides for every cell")
    ap.add_argument("--mps", action="store_true",
                    help="run the cells under NVIDIA's Multi-Process Service so their kernels share the GPU at once")
    ap.add_argument("--report-only", action="store_true", help="run nothing; write the report from finished cells")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        spec = spec_mod.select(spec_mod.load_spec(args.preset), args.methods, args.seeds, args.prompts)
        if args.workers < 1:
            raise spec_mod.ConfigError(f"--workers {args.workers} must be at least 1.")
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        cells = spec_mod.expand(spec, args.set)
        threads = args.threads_per_run or max(1, (os.cpu_count() or 1) // args.workers)
        start = time.perf_counter()
        ran, mps = ([], "off") if args.report_only else runner.run_cells(
            out, cells, args.workers, threads, args.mps, relative_cost=spec.relative_cost)
        info = {
            "preset": spec.name,
            "command": "python benchmark.py " + " ".join(shlex.quote(a) for a in argv),
            "machine": machine_description(),
            "versions": {k: v for k, v in package_versions().items() if v},
            "git_commit": git_commit(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall_s": round(time.perf_counter() - start, 1),
            "cells_run": len(ran),
            "workers": args.workers,
            "threads_per_run": threads,
            "mps": mps,
        }
        if args.report_only and (out / "benchmark_info.json").is_file():
            info = {**json.loads((out / "benchmark_info.json").read_text()), "report_rewritten": info["finished"]}
        else:
            (out / "benchmark_info.json").write_text(json.dumps(info, indent=2))
        result = report.write_report(out, spec, cells, info)
    except ScoreliftError as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in result["rows"] if r["status"] != "ok"]
    print(f"Report: {out / 'report.html'} and {out / 'report.md'} ({len(cells) - len(failed)}/{len(cells)} cells finished).")
    for s in result["summary"]:
        if not s["finished"]:
            print(f"  {s['method']:<10} no finished cells")
            continue
        print(f"  {s['method']:<10} IoU {s['iou']:.3f} ± {s['iou_std']:.3f}  identification {s['identification']:.3f} "
              f"± {s['identification_std']:.3f}  colour error {s['colour_error']:.3f}  {s['median_s_per_it']:.4f} s/it")
    return 1 if failed else 0
