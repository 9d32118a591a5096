"""Optimizers with one parameter group per part, each with its own learning rate.

``check_optimizer_config`` is the start-up check of ``system.optimizer`` (the system's
``check_config`` calls it): the name, the keyword arguments (tried on a dummy parameter) and
every learning rate, before anything is built or written. ``build_optimizer`` builds it once the
parts exist; ``state_slots`` says how much state it keeps per parameter (the memory check).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterable

import torch

from ..errors import ConfigError

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamax": torch.optim.Adamax,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
# The system's optimizer groups: one per part (a part without trainable parameters gets none).
PARTS = ("geometry", "background", "renderer", "guidance")
# The largest learning rate a run takes without system.optimizer.allow_unusual_lr. Adam-family
# optimizers (adam, adamax, adamw) move every weight by about lr per step whatever the gradient's
# scale (the step is lr * m / sqrt(v), and |m / sqrt(v)| is about 1), and the weights of the parts
# live within a few units (raw voxel values, latents bounded to +-3, colours behind a sigmoid,
# MLP weights of ~0.1). A rate above 10 throws every weight past its whole useful range on the
# first step; the presets use 1e-4 to 0.05, so 10 is 200 times the largest of them.
MAX_LR = 10.0
# Constructor arguments the system sets itself (the groups and their per-part rates).
RESERVED_ARGS = ("params", "lr")


@dataclass(kw_only=True)
class OptimizerConfig:
    """name: one of OPTIMIZERS; args: extra keyword arguments (betas, eps, ...);
    lr: learning rate per part name (geometry, background, renderer, guidance), each in
    0..MAX_LR (0 freezes the part: it keeps its initial values);
    allow_unusual_lr: true lets rates above MAX_LR (10) through, for experiments (negative
    rates stay refused: they climb the loss)."""

    name: str
    args: dict
    lr: dict
    allow_unusual_lr: bool = False


def check_optimizer_name(name) -> type[torch.optim.Optimizer]:
    """The optimizer class ``system.optimizer.name`` names; ConfigError listing the choices."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ConfigError(
            f"system.optimizer.name={name!r} is not a known optimizer; choose one of {', '.join(OPTIMIZERS)}."
        )
    return OPTIMIZERS[name]


def check_lr(part: str, value, allow_unusual: bool) -> None:
    """ConfigError unless ``value`` (system.optimizer.lr.<part>) is a number in 0..MAX_LR (any
    non-negative number with ``allow_unusual``)."""
    key = f"system.optimizer.lr.{part}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number, a learning rate in 0..{MAX_LR:g} (e.g. {key}=0.01).")
    if value < 0:
        raise ConfigError(
            f"{key}={value!r} is negative; a learning rate must lie in 0..{MAX_LR:g} (0 freezes the {part}). A "
            f"negative rate climbs the loss instead of descending it, and torch's optimizers refuse a negative lr "
            f"(\"Invalid learning rate\"), so system.optimizer.allow_unusual_lr=true does not allow it either. "
            f"Set e.g. {key}=0.01."
        )
    if value > MAX_LR and not allow_unusual:
        raise ConfigError(
            f"{key}={value!r} is above {MAX_LR:g}, the largest learning rate a run takes (allowed: 0..{MAX_LR:g}, "
            f"0 freezes the {part}). Adam-family optimizers move every weight by about lr per step and the "
            f"parts' weights live within a few units, so such a rate throws them past any useful value on the "
            f"first step (the presets use 1e-4 to 0.05). Lower it, or set system.optimizer.allow_unusual_lr=true "
            f"to train with it anyway."
        )


def accepted_args(cls: type[torch.optim.Optimizer]) -> list[str]:
    """The keyword arguments of ``cls`` that system.optimizer.args may set."""
    names = inspect.signature(cls.__init__).parameters
    return [n for n in names if n not in ("self", *RESERVED_ARGS)]


def try_optimizer(cls: type[torch.optim.Optimizer], args: dict, device: torch.device) -> Exception | None:
    """Build ``cls`` with ``args`` on a dummy parameter [1] on ``device`` and step it once with a
    zero gradient (some arguments fail only in a step, e.g. on the wrong device); None if that
    works, else what torch raised."""
    dummy = torch.nn.Parameter(torch.zeros(1, device=device))  # [1]
    try:
        optimizer = cls([dummy], lr=1e-3, **args)
        dummy.grad = torch.zeros_like(dummy)
        optimizer.step()
    except Exception as exc:  # noqa: BLE001  (torch raises TypeError, ValueError, IndexError, RuntimeError)
        return exc
    return None


def check_optimizer_args(cls: type[torch.optim.Optimizer], args, device: torch.device) -> None:
    """ConfigError unless ``cls`` accepts ``args`` (system.optimizer.args), tried on a dummy
    parameter (``try_optimizer``), so that a bad beta, eps or unknown keyword fails at start-up
    with the value instead of in the run's first step. The message names the one argument
    whose removal makes the rest work, where there is one."""
    if not isinstance(args, dict):
        raise ConfigError(
            f"system.optimizer.args={args!r} must be a mapping of keyword arguments of torch.optim.{cls.__name__} (e.g. {{}})."
        )
    reserved = [k for k in RESERVED_ARGS if k in args]
    if reserved:
        raise ConfigError(
            f"system.optimizer.args={args!r} sets {', '.join(reserved)}, which the system sets itself: one parameter "
            f"group per part, each with its learning rate from system.optimizer.lr.<part>; remove it from the args."
        )
    exc = try_optimizer(cls, args, device)
    if exc is None:
        return
    culprits = [k for k in args if try_optimizer(cls, {n: v for n, v in args.items() if n != k}, device) is None]
    where = f"system.optimizer.args.{culprits[0]}={args[culprits[0]]!r}" if len(culprits) == 1 else f"system.optimizer.args={args!r}"
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    raise ConfigError(
        f"{where} is refused by torch.optim.{cls.__name__} ({type(exc).__name__}: {reason}). It takes the keyword "
        f"arguments {', '.join(accepted_args(cls))}; see PyTorch's documentation of torch.optim.{cls.__name__} for "
        f"their allowed values."
    )


def check_optimizer_config(cfg: OptimizerConfig, device: torch.device) -> None:
    """Start-up check of ``system.optimizer``: a known name, args the optimizer accepts (tried on
    ``device``, where the run trains), learning rates only for the system's parts, each in range."""
    cls = check_optimizer_name(cfg.name)
    if not isinstance(cfg.allow_unusual_lr, bool):
        raise ConfigError(f"system.optimizer.allow_unusual_lr={cfg.allow_unusual_lr!r} must be true or false.")
    unknown = [k for k in cfg.lr if k not in PARTS]
    if unknown:
        raise ConfigError(
            f"system.optimizer.lr names unknown part(s) {unknown}; the parts are {', '.join(PARTS)}."
        )
    for part, value in cfg.lr.items():
        check_lr(part, value, cfg.allow_unusual_lr)
    check_optimizer_args(cls, cfg.args, device)


def state_slots(name, args) -> int:
    """Tensors of a parameter's size that optimizer ``name`` keeps per parameter: adam and adamw
    2 (first and second moments; 3 with amsgrad), adamax 2 (moment and infinity norm), sgd 1 with
    momentum (the momentum buffer), else 0. An unknown name counts 0, so an estimate built on
    it is a lower bound."""
    args = args or {}
    if name in ("adam", "adamw"):
        return 3 if args.get("amsgrad") else 2
    if name == "adamax":
        return 2
    if name == "sgd":
        return 1 if args.get("momentum") else 0
    return 0


def build_optimizer(cfg: OptimizerConfig, parts: dict[str, Iterable[torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """One group per part that has trainable parameters; every such part needs an lr entry."""
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(
            f"Unknown optimizer {cfg.name!r} in system.optimizer.name; choose one of {', '.join(OPTIMIZERS)}."
        )
    unknown = [k for k in cfg.lr if k not in parts]
    if unknown:
        raise ConfigError(
            f"system.optimizer.lr names unknown part(s) {unknown}; the parts are {', '.join(parts)}."
        )
    groups = []
    for part, params in parts.items():
        # A part may split its parameters into named groups, each at a factor of the part's rate
        # (Geometry.optimizer_groups: (name, parameters, factor)); otherwise one group.
        params = list(params)
        named = params if params and isinstance(params[0], tuple) else [(None, params, 1.0)]
        named = [(n, [p for p in ps if p.requires_grad], f) for n, ps, f in named]
        if not any(ps for _, ps, _ in named):
            continue
        if part not in cfg.lr:
            raise ConfigError(
                f"The {part} has trainable parameters but system.optimizer.lr has no `{part}` entry; "
                f"add e.g. `system.optimizer.lr.{part}=0.01` (set 0 to freeze it)."
            )
        for name, ps, factor in named:
            if ps:
                groups.append({"params": ps, "lr": float(cfg.lr[part]) * float(factor),
                               "name": part if name is None else f"{part}.{name}"})
    if not groups:
        raise ConfigError("Nothing to optimise: no part has trainable parameters.")
    return OPTIMIZERS[cfg.name](groups, **cfg.args)
