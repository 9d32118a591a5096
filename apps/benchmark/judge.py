"""Judge two methods of any benchmark by the claims' rule: paired by (prompt, seed), 95 % bootstrap.

    scorelift-bench judge benchmarks/shapes-schedule-cpu/results.csv paas-random paas-annealed
    scorelift-bench judge OUT/results.csv sds ssd --metric colour_error --expect less
    scorelift-bench judge NEW/results.csv sjc-sds paas-random --also OLD/results.csv

It reads the finished rows (status ``ok``) of a benchmark's ``results.csv``, pairs method A's and
method B's values of ``--metric`` by (prompt, seed), and prints the part's verdict, the mean
difference A - B and its interval, exactly as ``scorelift-bench claims`` judges a part (the rule:
``scorelift.benchmark.verdict``, docs/claims.md). For a question a preset answers but no claim
file asks, such as one schedule against another on one prompt. ``--also`` adds the rows of other
benchmarks' results.csv (runs of the same machine), so an arm run once serves several comparisons.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from scorelift.benchmark import verdict


def method_values(rows: list[dict], method: str, metric: str) -> dict[str, float]:
    """{"<prompt> / seed <seed>": value} of one method's finished rows."""
    return {f"{r['prompt']} / seed {r['seed']}": float(r[metric]) for r in rows
            if r["method"] == method and r["status"] == "ok"}


def read_rows(paths: list[Path]) -> list[dict]:
    """The rows of every results.csv in ``paths``, in order."""
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def repeated_cells(rows: list[dict]) -> set[tuple[str, str, str]]:
    """The (method, prompt, seed) keys that more than one row has."""
    seen, twice = set(), set()
    for r in rows:
        key = (r["method"], r["prompt"], r["seed"])
        (twice if key in seen else seen).add(key)
    return twice


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scorelift-bench judge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a benchmark's results.csv")
    ap.add_argument("a", help="method A (the one the claim favours)")
    ap.add_argument("b", help="method B")
    ap.add_argument("--metric", default="iou", help="a column of results.csv (default iou)")
    ap.add_argument("--expect", default="greater", choices=("greater", "less"),
                    help="the claimed sign of A - B (default greater)")
    ap.add_argument("--also", type=Path, action="append", default=[], metavar="RESULTS",
                    help="another results.csv whose rows join the first's (repeatable)")
    args = ap.parse_args(argv)
    paths = [args.results, *args.also]
    rows = read_rows(paths)
    twice = repeated_cells(rows)
    if twice:
        print(f"scorelift-bench judge: {len(twice)} (method, prompt, seed) row(s) appear in more than one place, such as "
              f"{sorted(twice)[0]}; give each cell once.", file=sys.stderr)
        return 2
    methods = sorted({r["method"] for r in rows})
    unknown = [m for m in (args.a, args.b) if m not in methods]
    if unknown or not rows or args.metric not in rows[0]:
        what = f"method(s) {', '.join(unknown)}" if unknown else f"--metric {args.metric!r}"
        print(f"scorelift-bench judge: {what} not in {', '.join(map(str, paths))}; its methods: {', '.join(methods) or 'none'}; "
              f"its columns: {', '.join(rows[0]) if rows else 'none'}.", file=sys.stderr)
        return 2
    a, b = method_values(rows, args.a, args.metric), method_values(rows, args.b, args.metric)
    part = verdict.judge(args.expect, a, b)
    sign = ">" if args.expect == "greater" else "<"
    print(f"{args.a} vs {args.b} on {args.metric} (expected A {sign} B): {part.verdict}; "
          f"A - B = {part.effect:.3f} [{part.low:.3f}, {part.high:.3f}] over {part.units} paired (prompt, seed) "
          f"units; {part.why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
