"""What every run directory records: seed, prompt, command, versions, device."""

from __future__ import annotations

import json
import os
import logging
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from .atomic import write_text_atomic
from .resolvers import package_data_path

log = logging.getLogger(__name__)

PACKAGES = ("torch", "pytorch-lightning", "diffusers", "transformers", "hydra-core", "numpy", "nerfacc", "peft", "scorelift")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """HEAD's hash of the checkout scorelift runs from, with "+dirty" when the working tree differs
    from it (as on a copied tree). Outside a git checkout (an installed wheel, a tree copied to
    another machine without .git): ``$SCORELIFT_GIT_COMMIT``, which whoever copied the tree sets
    (tools/gpu_round.sh reads it from ``.gpu-go/commit``), else None."""
    source = package_data_path("scorelift")
    given = os.environ.get("SCORELIFT_GIT_COMMIT") or None
    try:
        head = subprocess.run(
            ["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not head:
            return given
        status = subprocess.run(
            ["git", "-C", source, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return head + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return given


def write_run_info(run_dir: Path, cfg: dict, device: torch.device, mode: str) -> dict:
    """Write run_dir/run_info.json (appending this invocation to its history) and return it."""
    path = run_dir / "run_info.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    invocation = invocation_record(mode, device, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    info = {
        "prompt": cfg["prompt"],
        "evaluate_as": cfg.get("evaluate_as", cfg["prompt"]),
        "seed": cfg["seed"],
        "system": cfg["system"]["name"],
        "guidance": cfg["guidance"]["type"],
        "prior": cfg["prior"].get("model", cfg["prior"]["type"]),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "invocations": previous.get("invocations", []) + [invocation],
    }
    write_json_atomic(path, info)
    return info


def invocation_record(mode: str, device: torch.device, started: str) -> dict:
    """One invocation's entry in run_info.json's history: how and where it was started."""
    return {
        "mode": mode,
        "argv": sys.argv,
        "started": started,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "openmp": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ},
    }


def append_invocation(run_dir: Path, mode: str, device: torch.device, started: str, **details) -> None:
    """Add a finished re-render or export (``mode`` test / export) to run_info.json's history, and
    nothing else: the run's own record (prompt, seed, the versions it trained with) stays as it is.
    Called only when the invocation succeeded: one that fails leaves the history untouched."""
    path = Path(run_dir) / "run_info.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.setdefault("invocations", []).append({
        **invocation_record(mode, device, started),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "status": "finished",
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **details,
    })
    write_json_atomic(path, info)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def record_end(run_dir: Path, status: str, **details) -> None:
    """Add how this invocation ended to its entry in run_info.json: ``status`` (finished,
    stopped, failed, write failed), the time, and ``details`` (signal, step, message). Best
    effort: a run that ends because the disk is full may not be able to write it."""
    path = Path(run_dir) / "run_info.json"
    try:
        info = json.loads(path.read_text())
        info["invocations"][-1].update({"status": status, "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        **{k: v for k, v in details.items() if v is not None}})
        write_json_atomic(path, info)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        log.warning("Could not record the end of the run in %s (%s).", path, exc)
