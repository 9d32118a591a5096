"""Will the geometry fit in the device's memory? Told from the parsed config at start-up,
before anything is allocated (part of ``scorelift.checks.check_inputs``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .units import human_bytes

CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v2, v1


def cpu_available_bytes() -> tuple[int, str] | None:
    """(bytes of RAM a new allocation can still get, where that was read): /proc/meminfo's
    MemAvailable (Linux) or sysconf's pages elsewhere, capped by the container's
    cgroup memory limit where one is set (MemAvailable shows the host's memory, and a container
    past its limit is killed without a message). None when nothing can be read."""
    have = where = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have, where = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere sysconf's available pages, or (macOS has no such name) its physical pages: the
    # whole RAM, an upper bound, so that a run refused on it certainly cannot fit.
    for name, what in (("SC_AVPHYS_PAGES", "sysconf's available pages"), ("SC_PHYS_PAGES", "sysconf's physical pages")):
        if have is None:
            try:
                have, where = os.sysconf(name) * os.sysconf("SC_PAGE_SIZE"), what
            except (AttributeError, ValueError, OSError):  # no such name here (Windows has no sysconf)
                pass
    if have is None:
        return None
    for path in CGROUP_LIMITS:
        try:
            limit = int(Path(path).read_text().strip())  # "max" (no limit) fails to parse: skipped
        except (OSError, ValueError):
            continue
        if limit < have:
            have, where = limit, f"the container's memory limit in {path}"
    return have, where


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(free bytes, a description) of the device the run trains on: CUDA's free memory
    (``torch.cuda.mem_get_info``), or the CPU's available RAM; None when it cannot be told."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"{device} has {human_bytes(free)} free (of {human_bytes(total)})"
    if device.type == "cpu":
        found = cpu_available_bytes()
        if found is not None:
            return found[0], f"the CPU has {human_bytes(found[0])} of RAM available ({found[1]})"
    return None


def smaller_options(geometry_cls, geometry_cfg, copies: int) -> dict[str, str]:
    """The geometry's size options set above their Config default, each with what the run would
    need with that option back at its default, all else equal: {option: 'geometry.<option> (its
    default, <value>, needs <bytes> in all)'}."""
    import dataclasses

    if not dataclasses.is_dataclass(geometry_cfg):
        return {}
    defaults = {f.name: f.default for f in dataclasses.fields(geometry_cfg)}
    fixes = {}
    for option in geometry_cls.size_options:
        default, value = defaults.get(option), getattr(geometry_cfg, option, None)
        if isinstance(default, (int, float)) and isinstance(value, (int, float)) and value > default:
            need = geometry_cls.parameter_bytes(dataclasses.replace(geometry_cfg, **{option: default}))
            if need is not None:
                fixes[option] = f"geometry.{option} (its default, {default}, needs {human_bytes(need * copies)} in all)"
    return fixes


def check_memory(cfg: DictConfig, parts: dict, device: torch.device) -> None:
    """ConfigError when the geometry's parameters, their gradients and the optimizer's state per
    parameter (``Geometry.parameter_bytes`` x (2 + ``optim.state_slots``)) exceed the free memory
    of the device the run trains on; told from the parsed config, before anything is allocated.
    Only a sure failure is refused: the prior, the renders and the activations need memory too."""
    from .systems.optim import state_slots
    from .trainer_options import lightning_precision

    geometry_cls, geometry_cfg = parts["geometry"]
    per_copy = geometry_cls.parameter_bytes(geometry_cfg)

    found = None if per_copy is None else available_memory(device)
    if found is None:
        return
    dtype = str(torch.get_default_dtype()).replace("torch.", "")
    if lightning_precision(cfg.trainer.precision) == "64-true":  # Lightning turns the module to float64
        per_copy = per_copy * 8 // torch.get_default_dtype().itemsize
        dtype = "float64 (trainer.precision=64-true)"
    name = OmegaConf.select(cfg, "system.optimizer.name")
    args = OmegaConf.select(cfg, "system.optimizer.args")
    slots = state_slots(name, OmegaConf.to_container(args) if isinstance(args, DictConfig) else args)
    need = per_copy * (2 + slots)  # parameters, gradients, optimizer state
    if need <= found[0]:
        return
    fixes = smaller_options(geometry_cls, geometry_cfg, 2 + slots)
    named = list(fixes) or list(geometry_cls.size_options)  # the options set above their defaults first
    rest = [o for o in geometry_cls.size_options if o not in named]
    key = lambda option: f"geometry.{option}={getattr(geometry_cfg, option)!r}"  # noqa: E731
    keys = ", ".join(map(key, named)) + (f" (with {', '.join(map(key, rest))})" if rest else "")
    fix = " or ".join(fixes.values()) or " or ".join(f"geometry.{o}" for o in named)
    state = f" and the {slots} state tensor{'' if slots == 1 else 's'} per parameter of system.optimizer.name={name}"
    raise ConfigError(
        f"{keys} gives the {cfg.geometry.type} geometry {human_bytes(per_copy)} of {dtype} parameters, "
        f"{human_bytes(need)} with their gradients{state if name else ''}, but {found[1]}, so the run cannot start. "
        f"Lower {fix}, or train on a device with more memory."
    )
