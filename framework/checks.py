"""Every check of a composed run config that needs no model weights, in one place.

``check_inputs`` runs once per launch, before anything is loaded or written: mode, seed, device,
prompt, trainer, cameras, export options, resume, each part's config, and the composition of the
parts (render kind against the prior's latent size and channels, guidance against render kind),
fed by what the parts declare (``Geometry.feature_kind_of``, ``Guidance.supports_*``,
``DiffusionPrior.inspect``; the trainer section's own checks are in ``trainer_options``). ConfigError / PluginError / PriorLoadError name the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scorelift import builders, registry
from scorelift.config import parse_config
from scorelift.errors import ConfigError, PluginError
from scorelift.outputs import checkpoint as ckpt_files
from scorelift.outputs.checkpoint import checkpoint_path
from scorelift.run_lock import check_not_in_use
from scorelift.trainer_options import check_trainer

MODES = ("train", "test", "export")
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


def check_finite(node, key: str = "") -> None:
    """ConfigError naming the first NaN or infinite number anywhere in a (resolved) config: no
    option of a run means anything at NaN or infinity, and a NaN scale or weight would train on
    silently (a NaN guidance scale zeroes every gradient)."""
    if isinstance(node, dict):
        for name, value in node.items():
            check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(
            f"{key}={node} is not a finite number; every number of a run config must be finite (set {key} "
            f"to a real value, e.g. its default: `scorelift --cfg job` shows them)."
        )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:<index>.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for, but CUDA is not available here; use device=cpu or device=auto.")
    return device


@dataclass
class ResumePoint:
    """Where a resumed run continues: ``path`` (None: the run stopped before its first
    checkpoint, so it starts again from step 0 in its directory), its global ``step``, and the
    newer checkpoints that could not be read, (path, why), which it skips."""

    path: Path | None
    step: int
    skipped: list


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> ResumePoint | None:
    """The checkpoint to continue from: ``resume`` itself if it is a file, else the run's newest
    readable checkpoint (last.ckpt, then step_*.ckpt by step: a damaged newest one falls back to
    the one before it). None when the config does not resume."""
    if not cfg.resume:
        return None
    given = Path(str(cfg.resume)).expanduser()
    paths = [given] if given.is_file() else ckpt_files.candidates(run_dir)
    if not paths:
        if (Path(run_dir) / "config.yaml").is_file() and cfg.mode == "train":
            return ResumePoint(None, 0, [])
        raise ConfigError(
            f"resume={cfg.resume!r}: no checkpoint at {str(checkpoint_path(run_dir))!r}. Pass a run directory that "
            f"holds checkpoints/last.ckpt, or the path of a .ckpt file."
        )
    path, step, skipped = ckpt_files.first_readable(paths)
    if path is None:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise ConfigError(
            f"resume={cfg.resume!r}: no checkpoint of the run can be read ({reasons}); pass another run directory "
            f"or .ckpt file to resume=."
        )
    return ResumePoint(path, step, skipped)


def check_run_dir(cfg: DictConfig, run_dir: Path | None) -> None:
    """The run directory is free to write: no live process holds its lock, and a new training run
    does not land on top of an earlier run's files (they would be overwritten)."""
    if run_dir is None or not Path(run_dir).is_dir():
        return
    check_not_in_use(run_dir)
    if cfg.mode == "train" and not cfg.resume and (
        (Path(run_dir) / "config.yaml").is_file() or ckpt_files.has_checkpoint(run_dir)
    ):
        raise ConfigError(
            f"The run directory {str(run_dir)!r} already holds a run; a new run there would overwrite its "
            f"checkpoints and logs. Continue it with resume={run_dir}, or start the new run elsewhere "
            f"(hydra.run.dir=... or leave hydra.run.dir at its default, a new timestamped folder)."
        )


def check_prompt(prompt) -> str:
    """The prompt, stripped; ConfigError if it is not text or is empty (any prior)."""
    if isinstance(prompt, (int, float)) and not isinstance(prompt, bool):
        prompt = str(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(
            f"The prompt is empty ({prompt!r}); set `prompt` to a description such as 'a red cube'."
        )
    return prompt.strip()


def checkpoint_system(ckpt: Path | None) -> str | None:
    """The system name a scorelift checkpoint was written by (None if it does not say), read
    without loading its tensors."""
    try:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap cannot map it, read it whole
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (a truncated or foreign file: say which and why)
        raise ConfigError(
            f"The checkpoint {str(ckpt)!r} cannot be read ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0]}); pass another run directory or .ckpt file to resume=."
        ) from None
    meta = state.get("scorelift", {}) if isinstance(state, dict) else {}
    return meta.get("system")


def check_resume(cfg: DictConfig, run_dir: Path | None) -> None:
    """mode and resume agree, the checkpoint exists, and it was written by this run's system."""
    if not cfg.resume:
        if cfg.mode in ("test", "export"):
            what = "re-renders" if cfg.mode == "test" else "exports the mesh of"
            raise ConfigError(f"mode={cfg.mode} {what} a finished run: pass resume=<run dir or .ckpt>.")
        return
    given = Path(str(cfg.resume)).expanduser()
    if not given.exists():
        raise ConfigError(
            f"resume={cfg.resume!r} does not exist. Pass a run directory (e.g. outputs/sjc-paas/a_red_cube@...) "
            f"or a checkpoint file inside one."
        )
    point = resume_checkpoint(cfg, run_dir if run_dir is not None else given)
    written_by = checkpoint_system(point.path)
    name = OmegaConf.select(cfg, "system.name")
    if written_by not in (None, name):
        raise ConfigError(
            f"The checkpoint was written by system {written_by!r}, but this run is system "
            f"{name!r}; resume it with system={written_by}."
        )


def find_plugin(kind: str, name, key: str):
    """The class of plugin ``name`` of ``kind``; the error names the config key that chose it."""
    if not isinstance(name, str) or not name:
        choices = ", ".join(registry.available(kind)[kind]) or "(none)"
        raise ConfigError(f"{key}={name!r} must name a {kind} plugin; the registered ones are: {choices}.")
    try:
        return registry.find(kind, name)
    except PluginError:
        refused = registry.rejection(kind, name)
        if refused:  # an installed package registered it, and the registration was refused
            raise ConfigError(f"{key}={name!r} names a {kind} that was not registered: {refused}") from None
        choices = ", ".join(registry.available(kind)[kind]) or "(none)"
        raise ConfigError(
            f"{key}={name!r} names no registered {kind} plugin; the registered ones are: {choices} "
            f"(`scorelift --list` shows them with where they come from)."
        ) from None


def check_part(kind: str, node, key: str):
    """Parse the config of the part at ``key`` against its plugin's Config and run the plugin's own
    ``check_config`` on it; returns (class, parsed config)."""
    node = builders.plain(node) if isinstance(node, DictConfig) or node is None else node
    if not isinstance(node, dict):
        raise ConfigError(f"The config of {key} must be a mapping of keys to values, got {node!r}.")
    cls = find_plugin(kind, node.get("type"), f"{key}.type")
    config_cls = getattr(cls, "Config", None)
    merged = builders.merged_config(kind, node["type"], node)
    parsed = parse_config(config_cls, merged, f"{key} ({node['type']})") if config_cls is not None else merged
    check = getattr(cls, "check_config", None)
    if check is not None:
        check(parsed)
    return cls, parsed


def check_resolution(cfg: DictConfig, kind: str | None, facts: dict) -> None:
    """The render size against what the prior takes: latent renders must be the prior's latent
    size; RGB renders are resized to its (square) pixel size, so they must be square."""
    height, width = int(cfg.data.height), int(cfg.data.width)
    if kind == "latent":
        size = facts.get("latent_size")
        if size is not None and (height, width) != (size, size):
            raise ConfigError(
                f"Latent renders must match the prior's latent size {size}x{size}, but data.height x "
                f"data.width is {height}x{width}; set data.height={size} data.width={size} (or render RGB)."
            )
    elif kind == "rgb" and height != width:
        pixels = facts.get("pixel_size")
        takes = f"{pixels}x{pixels}" if pixels else "square"
        raise ConfigError(
            f"data.height x data.width is {height}x{width}, but the prior's VAE takes {takes} images and "
            f"a non-square render would be stretched to a square; set data.width={height} (renders of "
            f"any square size are resized to the prior's)."
        )


def check_composition(cfg: DictConfig, parts: dict, facts: dict) -> None:
    """The parts against each other: the background's channels against the geometry's, latent
    channels against the prior's, the render kind against what the guidance accepts, and the
    render size against the prior (``check_resolution``). ``parts``: kind -> (class, parsed config)."""
    geometry_cls, geometry_cfg = parts["geometry"]
    guidance_cls = parts["guidance"][0]
    n_geometry = getattr(geometry_cfg, "n_features", None)
    n_background = getattr(parts["background"][1], "n_features", None)
    if None not in (n_geometry, n_background) and n_geometry != n_background:
        raise ConfigError(
            f"The geometry renders {n_geometry} channels (geometry.n_features) but the background has "
            f"{n_background} (background.n_features); they must match."
        )
    kind = geometry_cls.feature_kind_of(geometry_cfg)
    guidance = cfg.guidance.type
    if kind == "latent":
        channels = facts.get("latent_channels")
        if None not in (channels, n_geometry) and n_geometry != channels:
            raise ConfigError(
                f"Latent geometry renders {n_geometry} channels but the prior's latents have {channels}; "
                f"set geometry.n_features={channels}."
            )
        if not guidance_cls.supports_latent:
            raise ConfigError(
                f"guidance={guidance} needs RGB renders, but this system renders {n_geometry}-channel latents "
                f"(geometry.feature_activation={getattr(geometry_cfg, 'feature_activation', '?')}). Use it with "
                f"system=dreamfusion or system=prolificdreamer, or render RGB here with geometry.n_features=3 "
                f"geometry.feature_activation=sigmoid background.n_features=3. Valid combinations: README, "
                f"'Methods and valid combinations'."
            )
    elif kind == "rgb":
        if n_geometry is not None and n_geometry != 3:
            raise ConfigError(f"RGB geometry must have 3 features, got geometry.n_features={n_geometry}.")
        if not guidance_cls.supports_rgb:
            raise ConfigError(
                f"guidance={guidance} needs latent renders, but this system renders RGB; use system=sjc "
                f"(latent voxel grid). Valid combinations: README, 'Methods and valid combinations'."
            )
    check_resolution(cfg, kind, facts)


def check_inputs(cfg: DictConfig, run_dir: Path | None = None) -> None:
    """Every check that needs no model weights, before anything is loaded or written: mode, seed,
    device, prompt, trainer, cameras, resume, each part's config, the prior's model (layout,
    tokenizer limit, image sizes) and how the parts fit together. ConfigError / PluginError /
    PriorLoadError name the key."""
    from scorelift.data.cameras import CameraSamplerConfig, check_sampler_config

    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not one of {', '.join(MODES)}.")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r} must be a whole number (e.g. seed=3).")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(
            f"seed={cfg.seed} is outside 0..{MAX_SEED} (2^32 - 1), the range of the random generators a run "
            f"seeds from it; pick a seed in that range (e.g. seed=3)."
        )
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"The config cannot be resolved: {first_line}") from None
    check_finite(resolved)
    pick_device(cfg.device)
    if not isinstance(cfg.deterministic, bool):
        raise ConfigError(f"deterministic={cfg.deterministic!r} must be true or false.")
    prompt = check_prompt(cfg.prompt)
    check_trainer(cfg)
    check_sampler_config(parse_config(CameraSamplerConfig, cfg.data, "data"))
    if cfg.mode == "export":
        from scorelift.outputs.mesh import check_export_config

        try:
            check_export_config(cfg.export)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                f"The export section has a value of the wrong type ({exc}); see the export section of "
                f"`scorelift --cfg job`."
            ) from None
    check_resume(cfg, run_dir)
    check_run_dir(cfg, run_dir)
    for path in cfg.plugins.paths:
        registry.load_plugin_file(path)

    for name in cfg.evaluators:
        find_plugin("evaluator", name, "evaluators")
    system_cls = find_plugin("system", OmegaConf.select(cfg, "system.type"), "system.type")
    check_system = getattr(system_cls, "check_config", None)  # systems have no interface to require it
    if check_system is not None:
        check_system(cfg)
    parts = {kind: check_part(kind, cfg[kind], kind) for kind in ("geometry", "background", "renderer", "guidance", "prior")}
    prior_cls, prior_cfg = parts["prior"]
    missing = [need for need in parts["guidance"][0].requires if need not in prior_cls.capabilities]
    if missing:
        raise ConfigError(
            f"guidance={cfg.guidance.type} needs the prior capability {', '.join(missing)}, which prior "
            f"{cfg.prior.type!r} ({prior_cls.__name__}) does not declare (its capabilities: "
            f"{', '.join(sorted(prior_cls.capabilities)) or 'none'}). Pick another guidance or a prior that has it."
        )
    facts = prior_cls.inspect(prior_cfg, prompt)
    check_composition(cfg, parts, facts)
    check_memory(cfg, parts)


# ---------------------------------------------------------------------------------- memory
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v2, v1


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as nvidia-smi and free report memory)."""
    value, unit = float(n), BYTE_UNITS[0]
    for unit in BYTE_UNITS:
        if value < 1024 or unit == BYTE_UNITS[-1]:
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


def cpu_available_bytes() -> tuple[int, str] | None:
    """(bytes of RAM a new allocation can still get, where that was read): /proc/meminfo's
    MemAvailable (Linux) or sysconf's pages elsewhere, capped by the container's
    cgroup memory limit where one is set (MemAvailable shows the host's memory, and a container
    past its limit is killed without a message). None when nothing can be read."""
    import os

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


def check_memory(cfg: DictConfig, parts: dict) -> None:
    """ConfigError when the geometry's parameters, their gradients and the optimizer's state per
    parameter (``Geometry.parameter_bytes`` x (2 + ``optim.state_slots``)) exceed the free memory
    of the device the run trains on; told from the parsed config, before anything is allocated.
    Only a sure failure is refused: the prior, the renders and the activations need memory too."""
    from scorelift.systems.optim import state_slots
    from scorelift.trainer_options import lightning_precision

    geometry_cls, geometry_cfg = parts["geometry"]
    per_copy = geometry_cls.parameter_bytes(geometry_cfg)
    found = None if per_copy is None else available_memory(pick_device(cfg.device))
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
