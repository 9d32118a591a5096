"""``scorelift-bench PRESET --out DIR``: run (or resume) a benchmark preset and write its report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import cells as cells_mod, claims_cli, judge, pack, report, spec as spec_mod
from .cli_common import add_slurm_arguments, machine_description, run_options, stopped
from scorelift.errors import EXIT_STOPPED, ScoreliftError

EPILOG = """examples:
  scorelift-bench ci --out outputs/bench-ci                      # the small preset CI runs
  scorelift-bench full --out benchmarks/shapes-full --workers 16 # 12 prompts x 4 methods x 3 seeds (GPU)
  scorelift-bench full --out outputs/bench --methods sds,ssd --seeds 0
  scorelift-bench full --out outputs/bench --workers 16 --mps --gpus 0,1  # 16 cells on each of GPUs 0 and 1
  scorelift-bench full --out benchmarks/shapes-full --report-only  # re-tabulate finished cells
  scorelift-bench ci --out outputs/bench-ci --set device=cpu      # extra launch.py overrides for every cell
Run the same command again to resume: finished cells are kept, stopped ones resume from their
checkpoint, the rest start again. Cells run as submitit jobs on this machine: --workers at once
on each GPU it sees (each cell pinned to one GPU), or --workers at once on the CPU.

Stopping: SIGTERM, SIGINT (Ctrl+C) or SIGUSR1 stops the benchmark. No new cell starts; each
running cell is sent SIGTERM, writes a checkpoint and exits, and what still runs after
--stop-grace seconds is killed (it resumes from its last periodic checkpoint). A second signal
kills at once. No cell outlives the runner (on Linux not even when the runner is killed).

exit codes:
  0   every cell finished; the report is written
  1   a cell failed (see its stdout.log) or was not run; the report lists it
  2   bad input (an unknown preset, method or option)
  75  stopped (by a signal, or a cell was stopped): run the same command again to resume"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scorelift-bench", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help=f"a preset name ({', '.join(spec_mod.preset_names())}) or a YAML file; or `claims` "
                                   "(scorelift-bench claims --help): the papers' claims and their verdicts; or `judge` or `pack` (their --help)")
    ap.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    ap.add_argument("--workers", "--cells-per-gpu", type=int, default=1, dest="workers",
                    help="cells run at once on each GPU, or on the CPU where there is no GPU (default 1)")
    ap.add_argument("--gpus", help="comma-separated GPU indices to use (default: every GPU this process sees)")
    ap.add_argument("--threads-per-run", type=int, default=None,
                    help="CPU threads per cell (default: CPU count / cells run at once, at least 1)")
    ap.add_argument("--methods", help="comma-separated subset of the preset's methods")
    ap.add_argument("--seeds", help="comma-separated seeds instead of the preset's")
    ap.add_argument("--prompts", help="comma-separated prompts instead of the preset's")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra launch.py overrides for every cell")
    ap.add_argument("--mps", action="store_true",
                    help="run the cells under NVIDIA's Multi-Process Service so their kernels share the GPU at once")
    add_slurm_arguments(ap)
    ap.add_argument("--report-only", action="store_true", help="run nothing; write the report from finished cells")
    ap.add_argument("--retry-failed", action="store_true",
                    help="run the cells that failed earlier again (by default they are reported, not re-run)")
    ap.add_argument("--stop-grace", type=float, default=cells_mod.DEFAULT_STOP_GRACE_S, metavar="SECONDS",
                    help="when stopped: how long running cells get to write a checkpoint and exit before they are "
                         f"killed (default {cells_mod.DEFAULT_STOP_GRACE_S:g}; keep it below a scheduler's kill delay)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["claims"]:  # the papers' claims, each judged on its own cells
        return claims_cli.main(argv[1:])
    if argv[:1] == ["judge"]:  # two methods of any results.csv, by the claims' rule
        return judge.main(argv[1:])
    if argv[:1] == ["pack"]:  # a folder's cells without checkpoints, to carry to another machine
        return pack.main(argv[1:])
    args = parse_args(argv)
    try:
        spec = spec_mod.select(spec_mod.load_spec(args.preset), args.methods, args.seeds, args.prompts)
        gpus, slurm = run_options(args)
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        cells = spec_mod.expand(spec, args.set)
        start = time.perf_counter()
        outcome = cells_mod.RunOutcome() if args.report_only else cells_mod.run_cells(
            out, cells, args.workers, args.threads_per_run, args.mps, relative_cost=spec.relative_cost,
            stop_grace_s=args.stop_grace, gpus=gpus, slurm=slurm, retry_failed=args.retry_failed)
        if outcome.stopped_by:
            return stopped(outcome, out, cells)
        # Imported here, not at the top: run_info imports torch (seconds of start-up), which the
        # runner does not need to start its cells.
        from scorelift.run_info import git_commit, package_versions

        info = {
            "preset": spec.name,
            "command": "scorelift-bench " + " ".join(shlex.quote(a) for a in argv),
            "machine": machine_description(),
            "versions": {k: v for k, v in package_versions().items() if v},
            "git_commit": git_commit(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall_s": round(time.perf_counter() - start, 1),
            "cells_run": len(outcome.records),
            "workers": args.workers,
            "gpus": outcome.gpus,
            "threads_per_run": outcome.threads_per_run,
            "mps": outcome.mps,
        }
        if args.report_only and (out / "benchmark_info.json").is_file():
            info = {**json.loads((out / "benchmark_info.json").read_text()), "report_rewritten": info["finished"]}
        else:
            (out / "benchmark_info.json").write_text(json.dumps(info, indent=2))
        result = report.write_report(out, spec, cells, info)
    except ScoreliftError as exc:
        print(f"scorelift-bench: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in result["rows"] if r["status"] != "ok"]
    only_stopped = failed and all(r["status"].startswith("stopped") for r in failed)
    print(f"Report: {out / 'report.html'} and {out / 'report.md'} ({len(cells) - len(failed)}/{len(cells)} cells finished).")
    for s in result["summary"]:
        if not s["finished"]:
            print(f"  {s['method']:<10} no finished cells")
            continue
        print(f"  {s['method']:<10} IoU {s['iou']:.3f} ± {s['iou_std']:.3f}  identification {s['identification']:.3f} "
              f"± {s['identification_std']:.3f}  colour error {s['colour_error']:.3f}  {s['median_s_per_it']:.4f} s/it")
    if only_stopped:
        print(f"{len(failed)} cell(s) stopped with a checkpoint: run the same command again to resume them (exit 75).")
    return EXIT_STOPPED if only_stopped else 1 if failed else 0


