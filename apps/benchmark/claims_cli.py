"""``scorelift-bench claims --out DIR``: run (or resume) every claim's cells, then write the
verdicts (claims.md, claims.html, claims.json; the rule is in scorelift.benchmark.verdict)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from scorelift.jobs.folder import write_json_atomic
from . import cells, claim_spec, claims_report, collect
from .cli_common import add_slurm_arguments, machine_description, run_options, stopped
from scorelift.errors import EXIT_STOPPED, ScoreliftError

EPILOG = """examples:
  scorelift-bench claims --out benchmarks/claims --workers 16 --mps   # every claim, full budget (GPU)
  scorelift-bench claims --out outputs/claims-ci --size ci            # every part end to end, 4 steps (CPU)
  scorelift-bench claims --out outputs/claims --claims sjc-paas,ssd
  scorelift-bench claims --out benchmarks/claims --report-only        # re-judge the finished cells
  scorelift-bench claims --out /shared/claims --executor slurm --slurm-gpus-per-job 1 --cells-per-job 4
Cells that two claims share (the same overrides, prompt and seed) run once. Run the same command
again to resume: finished cells are kept, stopped ones resume from their checkpoint. Stopping,
exit codes, --workers and the SLURM options are those of `scorelift-bench PRESET` (0 all
finished, 1 a cell failed, 2 bad input, 75 stopped: run again to resume)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scorelift-bench claims", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    ap.add_argument("--claims", help=f"comma-separated subset of the claims ({', '.join(claim_spec.claim_names())}), or paths of claim files")
    ap.add_argument("--size", choices=claim_spec.SIZES, default="full",
                    help="full: the claims' own budgets (default); ci: 4 steps, 3 seeds, the first prompt "
                         "(checks that everything runs; its verdicts mean nothing)")
    ap.add_argument("--workers", "--cells-per-gpu", type=int, default=1, dest="workers",
                    help="cells run at once on each GPU, or on the CPU where there is no GPU (default 1)")
    ap.add_argument("--gpus", help="comma-separated GPU indices to use (default: every GPU this process sees)")
    ap.add_argument("--threads-per-run", type=int, default=None, help="CPU threads per cell")
    ap.add_argument("--mps", action="store_true", help="run the cells under NVIDIA's Multi-Process Service")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra launch.py overrides for every cell")
    add_slurm_arguments(ap)
    ap.add_argument("--report-only", action="store_true", help="run nothing; judge the finished cells")
    ap.add_argument("--retry-failed", action="store_true", help="run the cells that failed earlier again")
    ap.add_argument("--stop-grace", type=float, default=cells.DEFAULT_STOP_GRACE_S, metavar="SECONDS",
                    help="when stopped: seconds running cells get to write a checkpoint before they are killed")
    return ap.parse_args(argv)


def select_claims(text: str | None) -> list[str]:
    names = claim_spec.claim_names()
    if not text:
        return names
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in chosen if n not in names and not (n.endswith((".yaml", ".yml")) and Path(n).is_file())]
    if bad or not chosen:
        raise claim_spec.ConfigError(f"--claims {text!r}: {bad or 'nothing'} not a claim; the claims: {', '.join(names)}, or the path of a claim file (.yaml).")
    return chosen


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        gpus, slurm = run_options(args)
        chosen = select_claims(args.claims)
        claims = [claim_spec.sized(claim_spec.load_claim(n), args.size) for n in chosen]
        # Every built-in claim names the cells it shares, so their folders do not depend on --claims.
        catalogue = [claim_spec.sized(claim_spec.load_claim(n), args.size) for n in claim_spec.claim_names()]
        plan = claim_spec.plan(claims, args.set, catalogue)
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        print(f"{len(claims)} claim(s), {sum(len(c) for c in plan.arms.values())} arm cells, {len(plan.cells)} distinct "
              f"cells to run or keep.", flush=True)
        start = time.perf_counter()
        outcome = cells.RunOutcome() if args.report_only else cells.run_cells(
            out, plan.cells, args.workers, args.threads_per_run, args.mps, relative_cost=plan.relative_cost,
            stop_grace_s=args.stop_grace, gpus=gpus, slurm=slurm, retry_failed=args.retry_failed)
        if outcome.stopped_by:
            return stopped(outcome, out, plan.cells)
        from scorelift.run_info import git_commit, package_versions

        info = {
            "claims": [c.name for c in claims], "size": args.size,
            "command": "scorelift-bench claims " + " ".join(shlex.quote(a) for a in argv),
            "machine": machine_description(), "versions": {k: v for k, v in package_versions().items() if v},
            "git_commit": git_commit(), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall_s": round(time.perf_counter() - start, 1), "cells_run": len(outcome.records), "workers": args.workers,
            "gpus": outcome.gpus, "threads_per_run": outcome.threads_per_run, "mps": outcome.mps, "executor": args.executor,
        }
        info_path = out / "claims_info.json"
        if args.report_only and info_path.is_file():
            info = {**json.loads(info_path.read_text()), "report_rewritten": info["finished"]}
        else:
            write_json_atomic(info_path, info)
        rows = [collect.cell_result(out, c) for c in plan.cells]
        collect.write_csv(out / "results.csv", rows, collect.RESULT_COLUMNS)
        results = claims_report.write_claims_report(out, claims, plan, info)
    except ScoreliftError as exc:
        print(f"scorelift-bench claims: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"Claims: {out / 'claims.html'} and {out / 'claims.md'} ({len(rows) - len(failed)}/{len(rows)} cells finished).")
    for r in results:
        print(f"  {r['name']:<20} {r['verdict']}")
        for p in r["parts"]:
            print(f"      {p['verdict']:<14} {p['sentence']}: {claims_report._effect(p)}, {p['units']} units")
    only_stopped = failed and all(r["status"].startswith("stopped") for r in failed)
    return EXIT_STOPPED if only_stopped else 1 if failed else 0
