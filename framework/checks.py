"""Every check of a composed run config that needs no model weights, in one place.

``check_inputs`` runs once per launch, before anything is loaded or written: mode, seed, device,
prompt, trainer, cameras, export options, resume, each part's config, and the composition of the
parts (render kind against the prior's latent size and channels, guidance against render kind),
fed by what the parts declare (``Geometry.feature_kind_of``, ``Guidance.supports_*``,
``DiffusionPrior.inspect``; the trainer section's own checks are in ``trainer_options``), the
run directory (its lock, an earlier run in it) and the geometry's memory against the device's
(``memory``). ConfigError / PluginError / PriorLoadError name the key and the fix.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import builders, fast_path, registry
from .config import parse_config
from .devices import pick_device
from .errors import ConfigError, PluginError
from .interfaces.geometry import DENSITY_KINDS
from .memory import check_memory
from .outputs import checkpoint_files as ckpt_files
from .outputs.checkpoint_files import checkpoint_path
from .plan import PART_KINDS, InitSource, PartPlan, PriorFacts, RunPlan
from .prompts import check_prompt, given_prompt, prompt_words
from .run_lock import check_not_in_use
from .trainer_options import check_trainer

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


def check_vocabulary(cfg: DictConfig, prompt: str | None, facts: PriorFacts) -> None:
    """A prior that declares the prompts it knows (``PriorFacts.vocabulary``) refuses a prompt with
    a word none of them has, naming the nearest it knows, unless ``allow_unknown_prompt=true``:
    such a run would train for its whole length on a prompt that nothing can score."""
    if prompt is None or facts.vocabulary is None or OmegaConf.select(cfg, "allow_unknown_prompt"):
        return
    words = prompt_words(prompt)
    unknown = [w for w in dict.fromkeys(words) if w not in facts.vocabulary_words]
    if not unknown:
        return
    nearest = difflib.get_close_matches(" ".join(words), facts.vocabulary, n=3, cutoff=0.0)
    model = OmegaConf.select(cfg, "prior.model") or OmegaConf.select(cfg, "prior.type")
    raise ConfigError(
        f"prompt={prompt!r}: the prior ({model}) knows {len(facts.vocabulary)} prompts, and "
        f"{', '.join(repr(w) for w in unknown)} is a word of none of them, so it cannot know this object. The "
        f"nearest it knows: {', '.join(repr(n) for n in nearest)}. Pick one of its prompts, or pass "
        f"allow_unknown_prompt=true to train on this one anyway.")


def check_conditioning(cfg: DictConfig, prompt: str | None, facts: PriorFacts, guidance_cls, guidance_cfg) -> None:
    """The prompt and the CFG settings against what the prior is conditioned on: an unconditional
    prior takes no prompt, and a prior without an unconditional branch (unconditional, or a class
    model without a null class) has no classifier-free guidance to set."""
    conditioning = facts.conditioning
    prior = f"prior={cfg.prior.type}" + (f" ({cfg.prior.model})" if "model" in cfg.prior else "")
    if conditioning == "none" and prompt is not None:
        raise ConfigError(
            f"prompt={prompt!r} was given, but {prior} is an unconditional model: it takes no prompt. Run it "
            f"with prompt=null (what it makes is what it was trained on), or pick a text-conditioned prior."
        )
    if conditioning != "none" and prompt is None:
        check_prompt(cfg.prompt)  # raises: a conditioned prior needs a prompt
    guided = conditioning != "none" and facts.has_unconditional
    if guided:
        return
    defaults = guidance_cls.Config() if getattr(guidance_cls, "Config", None) else None
    why = ("is unconditional" if conditioning == "none"
           else "has no unconditional branch (no null class)")
    for key in ("guidance_scale", "cfg_convention"):
        if defaults is not None and hasattr(defaults, key) and getattr(guidance_cfg, key) != getattr(defaults, key):
            raise ConfigError(
                f"guidance.{key}={getattr(guidance_cfg, key)!r} sets classifier-free guidance, but {prior} {why}: "
                f"there is one prediction and nothing to guide against, so the setting would be ignored. Remove "
                f"guidance.{key} from the command line (or pick a prior with an unconditional branch)."
            )


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
    """The class of plugin ``name`` of ``kind`` (a deferred one's declaration, ``registry.declared``:
    its module is imported when the run is built); the error names the config key that chose it."""
    if not isinstance(name, str) or not name:
        choices = ", ".join(registry.available(kind)[kind]) or "(none)"
        raise ConfigError(f"{key}={name!r} must name a {kind} plugin; the registered ones are: {choices}.")
    try:
        return registry.declared(kind, name)
    except PluginError:
        refused = registry.rejection(kind, name)
        if refused:  # an installed package registered it, and the registration was refused
            raise ConfigError(f"{key}={name!r} names a {kind} that was not registered: {refused}") from None
        choices = ", ".join(registry.available(kind)[kind]) or "(none)"
        raise ConfigError(
            f"{key}={name!r} names no registered {kind} plugin; the registered ones are: {choices} "
            f"(`scorelift --list` shows them with where they come from)."
        ) from None


def plan_part(kind: str, node, key: str) -> PartPlan:
    """The plan of the part at ``key``: its config parsed against its plugin's Config (once) and
    checked by the plugin's own ``check_config`` (once)."""
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
    return PartPlan(kind, node["type"], cls, parsed)


def check_part(kind: str, node, key: str):
    """``plan_part`` as (class, parsed config)."""
    part = plan_part(kind, node, key)
    return part.cls, part.config


def check_resolution(data, kind: str | None, facts: PriorFacts) -> None:
    """The render size of every phase of ``data`` (the parsed and checked CameraSamplerConfig)
    against what the prior takes: latent renders must be the prior's latent size; RGB renders are
    resized to its (square) pixel size, so they must be square."""
    for _, height, width in data.phases():
        if kind == "latent":
            size = facts.latent_size
            if size is not None and (height, width) != (size, size):
                raise ConfigError(
                    f"Latent renders must match the prior's latent size {size}x{size}, but data.height x "
                    f"data.width is {height}x{width}; set data.height={size} data.width={size} (or render RGB)."
                )
        elif kind == "rgb" and height != width:
            pixels = facts.pixel_size
            takes = f"{pixels}x{pixels}" if pixels else "square"
            raise ConfigError(
                f"data.height x data.width is {height}x{width}, but the prior takes {takes} images and "
                f"a non-square render would be stretched to a square; set data.width={height} (renders of "
                f"any square size are resized to the prior's)."
            )


def check_composition(cfg: DictConfig, parts: dict, facts: PriorFacts, data) -> None:
    """The parts against each other: the background's channels against the geometry's, latent
    channels against the prior's, the render kind against what the guidance accepts, and the
    render size against the prior (``check_resolution``). ``parts``: kind -> (class, parsed config);
    ``data``: the parsed camera sampler config."""
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
    if kind == "latent" and facts.space == "pixel":
        raise ConfigError(
            f"prior={cfg.prior.type} is a pixel-space model (no VAE, so there are no latents to render), but "
            f"this system renders {n_geometry}-channel latents (geometry.feature_activation="
            f"{getattr(geometry_cfg, 'feature_activation', '?')}). Render RGB: geometry.n_features=3 "
            f"geometry.feature_activation=sigmoid background.n_features=3 (the prior's presets do this). Valid "
            f"combinations: README, 'Methods and valid combinations'."
        )
    if kind == "latent":
        channels = facts.latent_channels
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
    check_resolution(data, kind, facts)


def check_render_fit(cfg: DictConfig, parts: dict, losses: dict) -> None:
    """The geometry against what the renderer draws, and each loss against what the renderer
    returns (``Renderer.renders``, ``Renderer.outputs_of``, ``Loss.reads``). ``parts``: kind ->
    (class, parsed config); ``losses``: name -> PartPlan."""
    geometry_cls = parts["geometry"][0]
    renderer_cls, renderer_cfg = parts["renderer"]
    geometry = f"geometry={cfg.geometry.type} ({geometry_cls.__name__})"
    renderer = f"renderer={cfg.renderer.type} ({renderer_cls.__name__})"
    kind = getattr(geometry_cls, "kind", "field")
    if kind not in renderer_cls.renders:
        raise ConfigError(
            f"{geometry} is a {kind}, but {renderer} draws {' and '.join(renderer_cls.renders)} geometry only. Pick "
            f"a renderer that draws a {kind} (`scorelift --list` describes each), or a geometry the renderer draws.")
    provided = renderer_cls.outputs_of(renderer_cfg)
    for name, loss in losses.items():
        missing = [need for need in getattr(loss.cls, "reads", ()) if need not in provided]
        if missing:
            hint = (" (renderer.return_normals=true adds normals and ray_dirs)"
                    if {"normals", "ray_dirs"} & set(missing) and "weights" in provided else "")
            raise ConfigError(
                f"The loss {name!r} ({loss.cls.__name__}) reads {', '.join(missing)} of the render, which {renderer} "
                f"does not return (it returns {', '.join(sorted(provided))}){hint}. Remove the loss from system.losses "
                f"and system.loss_weights, or pick a renderer that returns {', '.join(missing)}.")


def check_init_from(value, geometry_cls, source_cfg: DictConfig | None = None) -> InitSource | None:
    """The checked source of ``init_from=value`` for a run whose geometry class is
    ``geometry_cls`` (``scorelift.init_from`` says what is taken). ``source_cfg``: the config of a
    source that an earlier stage of the same job will write (its folder need not exist yet).
    ConfigError, one paragraph, when the source is no run with a checkpoint or its geometry cannot
    start this one's."""
    if value in (None, ""):
        return None
    run_dir = Path(str(value)).expanduser()
    checkpoint = None
    if source_cfg is None:
        if run_dir.is_file():
            run_dir = run_dir.parent.parent if run_dir.parent.name == "checkpoints" else run_dir.parent
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(
                f"init_from={value!r} is not a scorelift run directory (no config.yaml there). Pass the folder of a "
                f"finished run, e.g. the coarse stage a mesh stage starts from.")
        checkpoint = ckpt_files.newest_readable(run_dir)
        if checkpoint is None:
            raise ConfigError(
                f"init_from={value!r}: the run holds no readable checkpoint (checkpoints/last.ckpt), so there is "
                f"nothing to start from. Let that run train (resume it), or pass another run.")
        source_cfg = OmegaConf.load(run_dir / "config.yaml")
    geometry = plan_part("geometry", source_cfg.geometry, "the init_from run's geometry")
    background = plan_part("background", source_cfg.background, "the init_from run's background")
    from_field = hasattr(geometry_cls, "init_from") and getattr(geometry.cls, "kind", "field") in DENSITY_KINDS
    if not from_field and geometry.cls is not geometry_cls:
        raise ConfigError(
            f"init_from={value!r}: its geometry is {source_cfg.geometry.type} ({geometry.cls.__name__}), which cannot "
            f"start this run's {geometry_cls.__name__}: a geometry starts from a density field or Gaussians only if it "
            f"has init_from (the DMTet mesh and the Gaussians do), or from a geometry of its own class. Pass a run of "
            f"a density field or of Gaussians.")
    return InitSource(run_dir, checkpoint, geometry.cls, geometry.config, background.cls, background.config)


def check_inputs(cfg: DictConfig, run_dir: Path | None = None, init_source_cfg: DictConfig | None = None) -> RunPlan:
    """Every check that needs no model weights, before anything is loaded or written: mode, seed,
    device, prompt, trainer, cameras, resume, each part's config, the prior's model (layout,
    tokenizer limit, image sizes) and how the parts fit together. Returns the run's plan (each
    part's parsed, checked config, the device, the fast path, the prior's facts), which building
    takes as it is. ConfigError / PluginError / PriorLoadError name the key. ``init_source_cfg``:
    the config of the run ``init_from`` names, when an earlier stage will write it."""
    from .data.cameras import CameraSamplerConfig, check_sampler_config

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
    device = pick_device(cfg.device)
    fast = fast_path.setting(cfg)
    for key, value in (("deterministic", cfg.deterministic), ("fast_path", fast)):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false.")
    prompt = given_prompt(cfg.prompt)
    target = OmegaConf.select(cfg, "evaluate_as")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (str, int, float))):
        raise ConfigError(
            f"evaluate_as={target!r} must be text (what the evaluators score the run as, e.g. 'a cube') or null."
        )
    trainer = check_trainer(cfg)
    if OmegaConf.select(cfg, "viewer") is not None:
        from .viewer import check_viewer_config

        check_viewer_config(cfg.viewer)
    data = parse_config(CameraSamplerConfig, cfg.data, "data")
    check_sampler_config(data)
    if cfg.mode == "export":
        from .outputs.mesh import check_export_config

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
    system_config = parse_config(system_cls.Config, cfg.system, "system")
    losses = {name: plan_part("loss", {**(opts or {}), "type": name}, f"system.losses.{name}")
              for name, opts in system_config.losses.items()}
    parts = {kind: plan_part(kind, cfg[kind], kind) for kind in PART_KINDS}
    prior, guidance = parts["prior"], parts["guidance"]
    missing = [need for need in guidance.cls.requires if need not in prior.cls.capabilities]
    if missing:
        raise ConfigError(
            f"guidance={cfg.guidance.type} needs the prior capability {', '.join(missing)}, which prior "
            f"{cfg.prior.type!r} ({prior.cls.__name__}) does not declare (its capabilities: "
            f"{', '.join(sorted(prior.cls.capabilities)) or 'none'}). Pick another guidance or a prior that has it."
        )
    if prior.cls.conditioning != "none" and prompt is None:
        check_prompt(cfg.prompt)  # raises: a text prior needs a prompt to inspect
    declared = prior.cls.declared_vocabulary(prior.config)  # DiffusionPrior's default: {} (any text)
    check_vocabulary(cfg, prompt, PriorFacts.of(prior.cls, declared))  # before inspect loads a tokenizer
    facts = PriorFacts.of(prior.cls, {**prior.cls.inspect(prior.config, prompt), **declared})
    check_conditioning(cfg, prompt, facts, guidance.cls, guidance.config)
    as_pairs = {kind: (part.cls, part.config) for kind, part in parts.items()}
    check_composition(cfg, as_pairs, facts, data)
    check_render_fit(cfg, as_pairs, losses)
    init_from = None
    if cfg.mode == "train" and not cfg.resume:  # a resumed run continues from its own checkpoint
        init_from = check_init_from(OmegaConf.select(cfg, "init_from"), parts["geometry"].cls, init_source_cfg)
    check_memory(cfg, as_pairs, device)  # scorelift.memory: the geometry's parameters against the device
    # Last: it tries the optimizer's arguments on the device, and building a torch optimizer
    # imports torch._dynamo (0.7 s), which the checks above answer without.
    system_cls.check_config(system_config, device)
    return RunPlan(
        config=resolved, mode=cfg.mode, seed=int(cfg.seed), prompt=prompt, device=device, fast_path=fast,
        deterministic=bool(cfg.deterministic), system=PartPlan("system", str(cfg.system.type), system_cls, system_config),
        losses=losses, data=data, trainer=trainer, prior_facts=facts, init_from=init_from, **parts,
    )
