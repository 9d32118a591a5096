"""What the benchmark's two command lines share (``scorelift-bench`` for presets, ``scorelift-bench
claims``): the machine's description, the GPU and SLURM options and their checks, and the report of
a stopped run."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from . import cells, spec as spec_mod
from scorelift.errors import EXIT_STOPPED


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


def add_slurm_arguments(ap: argparse.ArgumentParser) -> None:
    """--executor and the SLURM job options, shared by the presets' and the claims' command lines."""
    ap.add_argument("--executor", choices=("local", "slurm"), default="local",
                    help="local: this machine's GPUs or CPUs (default); slurm: submit the cells as SLURM job arrays "
                         "(the --out folder must be on a filesystem the nodes share)")
    ap.add_argument("--slurm-partition", help="SLURM partition (default: the cluster's default)")
    ap.add_argument("--slurm-time", type=int, default=60, metavar="MINUTES", help="time limit of each job (default 60)")
    ap.add_argument("--slurm-gpus-per-job", type=int, default=0, help="GPUs each job asks for (default 0)")
    ap.add_argument("--slurm-cpus-per-job", type=int, default=1, help="CPUs each job asks for (default 1)")
    ap.add_argument("--cells-per-job", type=int, default=1, help="cells each SLURM job runs, one after another (default 1)")
    ap.add_argument("--array-parallelism", type=int, default=256, help="array tasks SLURM runs at once (default 256)")
    ap.add_argument("--sbatch", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra sbatch options for every job, such as qos=high or constraint=h100")


def parse_gpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdigit() for t in items) or len(set(items)) != len(items):
        raise spec_mod.ConfigError(f"--gpus {text!r} must be distinct comma-separated GPU indices, such as 0,1,3.")
    return [int(t) for t in items]


def slurm_options(args: argparse.Namespace):
    from scorelift.jobs import SlurmOptions

    extra = {}
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise spec_mod.ConfigError(f"--sbatch {item!r} must be KEY=VALUE, such as qos=high (an sbatch long "
                                       "option without its dashes).")
        extra[key.lstrip("-")] = value
    opts = SlurmOptions(partition=args.slurm_partition, time_min=args.slurm_time, gpus_per_task=args.slurm_gpus_per_job,
                        cpus_per_task=args.slurm_cpus_per_job, jobs_per_task=args.cells_per_job,
                        array_parallelism=args.array_parallelism, sbatch=extra, job_name="scorelift-bench")
    opts.check()
    return opts


def run_options(args: argparse.Namespace):
    """(GPU indices or None, SLURM options or None) from the options the presets' and the claims'
    command lines share, after checking --workers and --stop-grace."""
    if args.workers < 1:
        raise spec_mod.ConfigError(f"--workers {args.workers} must be at least 1.")
    if not args.stop_grace >= 0:
        raise spec_mod.ConfigError(f"--stop-grace {args.stop_grace:g} must be a number of seconds, 0 or more.")
    return parse_gpus(args.gpus), slurm_options(args) if args.executor == "slurm" else None


def stopped(outcome: cells.RunOutcome, out: Path, all_cells: list) -> int:
    """The runner was stopped by a signal: one line saying what is where (the lines of the
    stopped cells came before it), no report (it would be of a run cut short); exit 75."""
    finished = sum(cells.is_finished(out, c) for c in all_cells)
    print(f"scorelift-bench: stopped by {outcome.stopped_by}: {len(outcome.stopped)} cell(s) stopped, "
          f"{outcome.not_started} not started, {finished} of {len(all_cells)} finished; no report written. Run the same "
          f"command again to resume (exit code 75: stopped, resume me).", file=sys.stderr)
    return EXIT_STOPPED
