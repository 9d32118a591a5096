"""What every run directory records: seed, prompt, command, versions, device."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from scorelift.resolvers import package_data_path

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
    from it (as on a copied tree); None for an installed wheel (not in a git checkout)."""
    source = package_data_path("scorelift")
    try:
        head = subprocess.run(
            ["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not head:
            return None
        status = subprocess.run(
            ["git", "-C", source, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return head + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(run_dir: Path, cfg: dict, device: torch.device, mode: str) -> dict:
    """Write run_dir/run_info.json (appending this invocation to its history) and return it."""
    path = run_dir / "run_info.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    invocation = {
        "mode": mode,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    info = {
        "prompt": cfg["prompt"],
        "seed": cfg["seed"],
        "system": cfg["system"]["name"],
        "guidance": cfg["guidance"]["type"],
        "prior": cfg["prior"].get("model", cfg["prior"]["type"]),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "invocations": previous.get("invocations", []) + [invocation],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(path)
    return info
