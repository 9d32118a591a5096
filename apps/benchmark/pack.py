"""Pack a benchmark or claims output folder without checkpoints and logs, to move it between machines.

    scorelift-bench pack <out dir> <dest dir> [--part-mb 15]

Writes <dest dir>/cells.tar.gz.part00, part01, ... (split so each part stays under a transfer limit).
Kept: the folder's top-level files; per cell its records (job.json, segments.json, failed.json, and
stdout.log where the cell failed) and what reports and verdicts read from its run (metrics.json,
eval_curve.csv, timing.json, run_info.json, config.yaml, eval/, the turntable and its strip,
grid.png; for a staged run also stages.json and the same of each stage's folder). Left out: checkpoints, TensorBoard and CSV logs, validation images. A finished cell
unpacked elsewhere is finished there too (its job.json is what the runner checks); a stopped one
starts again, since its checkpoint stayed behind. Unpack with
``cat <dest>/cells.tar.gz.part* | tar -xzf - -C <out dir>``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

from scorelift.jobs.folder import RECORDS

RUN_FILES = {"metrics.json", "eval_curve.csv", "timing.json", "run_info.json", "config.yaml",
             "turntable.gif", "turntable.mp4", "turntable_strip.png", "grid.png"}
CELL_RECORDS = set(RECORDS)  # cell.json: what earlier versions wrote for job.json


def kept(rel: Path, folder: Path) -> bool:
    """Whether the file at ``rel`` (relative to the output folder) travels."""
    parts = rel.parts
    if parts[0] != "cells":
        return len(parts) == 1
    if len(parts) == 5:  # cells/<method>/<prompt>/<seed>/<file>
        return parts[4] in CELL_RECORDS or (parts[4] == "stdout.log" and (folder / "failed.json").exists())
    if len(parts) >= 6 and parts[4] == "run":
        if len(parts) == 6:
            return parts[5] in RUN_FILES or parts[5] == "stages.json"
        if parts[5] == "eval":
            return len(parts) == 7
        # a stage of a staged run (system=magic3d): run/<stage>/<file> and run/<stage>/eval/<file>,
        # which its per-stage rows read
        return not parts[5].startswith(".") and (
            (len(parts) == 7 and parts[6] in RUN_FILES) or (len(parts) == 8 and parts[6] == "eval"))
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scorelift-bench pack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a benchmark's or the claims' output folder")
    ap.add_argument("dest", type=Path, help="where the parts cells.tar.gz.partNN are written")
    ap.add_argument("--part-mb", type=float, default=15.0, help="the largest part, in MiB (default 15)")
    args = ap.parse_args(argv)
    src, dest = args.out, args.dest
    if not src.is_dir():
        print(f"scorelift-bench pack: {str(src)!r} is not a folder; give a benchmark's --out folder.", file=sys.stderr)
        return 2
    if not args.part_mb > 0:
        print(f"scorelift-bench pack: --part-mb {args.part_mb:g} must be positive.", file=sys.stderr)
        return 2
    part_bytes = int(args.part_mb * 2**20)
    buf, n = io.BytesIO(), 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            if kept(path.relative_to(src), path.parent):
                tar.add(path, arcname=str(path.relative_to(src)))
                n += 1
    data = buf.getvalue()
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), part_bytes):
        (dest / f"cells.tar.gz.part{i // part_bytes:02d}").write_bytes(data[i : i + part_bytes])
    print(f"packed {n} files, {len(data) / 2**20:.1f} MB, in {-(-len(data) // part_bytes)} part(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
