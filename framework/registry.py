"""Per-kind plugin registries.

Every part is a class registered under a kind and a name::

    @register("guidance", "sds")
    class SDSGuidance(Guidance): ...

``find(kind, name)`` returns the class, importing the built-in ``plugins`` package, the
modules named by the ``scorelift.plugins`` entry-point group and any local plugin files first.
Unknown names fail with a message that lists what exists.

A registration is refused when the name is taken by another class, the class does not derive
from its kind's interface, leaves a required method unimplemented or declares an unknown prior
capability. Where it is refused depends on who registers:

- built-in code and code that calls ``register`` itself: ``PluginError`` at once;
- an installed package (entry point): recorded, not raised, so the package's other plugins and
  the rest of scorelift keep working; ``load_failures()`` lists it, and choosing that name
  fails with the same message (``rejection``);
- a local plugin file (``plugins.paths``): ``PluginError``, and nothing of that file stays
  registered (the file is part of the run's own config, so the run stops).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from .errors import PluginError

KINDS = ("system", "geometry", "renderer", "background", "guidance", "loss", "prior", "evaluator")
ENTRY_POINT_GROUP = "scorelift.plugins"

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Entry:
    """A registered class and where it came from (module and distribution, if any)."""

    cls: type
    origin: str


@dataclass(frozen=True)
class Deferred:
    """A built-in part registered by name whose module is imported when the part is first used
    (``find``), because importing it is slow: the system, a Lightning module (Lightning costs
    about two seconds of start-up that ``--list``, ``--help`` and a refused command line never
    need). What start-up needs before then is given with the registration: the ``Config``
    dataclass, the ``check_config`` classmethod's function and a one-line ``summary``. ``declared``
    returns it where ``find`` would return the class."""

    target: str  # "module:Class"
    Config: type
    check_config: Callable
    summary: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def load(self) -> type:
        module, _, qualname = self.target.partition(":")
        return getattr(importlib.import_module(module), qualname)


@dataclass(frozen=True)
class Rejection:
    """A registration by an installed plugin package that was refused (its class was left out);
    ``message`` names the package, the plugin (kind, name, class, module), the reason and the fix."""

    kind: str
    name: str
    message: str


_registry: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_deferred_modules: set[str] = set()  # modules of Deferred registrations: discovery leaves them unimported
_discovered = False
_current_origin: str | None = None  # set while an entry point or local file is imported
_load_failures: list[str] = []
_rejections: list[Rejection] = []
# True while an entry point is imported: a refused registration is recorded, not raised, so
# the rest of the package's module still runs and registers its valid plugins.
_collecting = False
# While a local plugin file is imported: (kind, name, replaced Entry or None, replaced stored
# config or None) for each of its registrations, so a failure can undo them all.
_undo: list[tuple[str, str, Entry | None, object]] | None = None


def _check_kind(kind: str) -> None:
    if kind not in _registry:
        raise PluginError(f"Unknown plugin kind {kind!r}; the kinds are: {', '.join(KINDS)}.")


def describe_class(cls) -> str:
    """``class SDSGuidance in module scorelift.plugins.guidance.sds`` (also for a non-class)."""
    if isinstance(cls, Deferred):
        return f"class {cls.target.partition(':')[2]} in module {cls.module}"
    return f"class {getattr(cls, '__qualname__', repr(cls))} in module {getattr(cls, '__module__', '?')}"


def _identity(cls) -> tuple[str | None, str | None]:
    return getattr(cls, "__module__", None), getattr(cls, "__qualname__", None)


def same_class(a, b) -> bool:
    """The same object, or the same module and qualname: a module executed again (a reload, a
    local plugin file imported twice) defines its classes anew, and that is no collision; two
    classes of the same name in different modules are."""
    return a is b or (_identity(a) == _identity(b) and None not in _identity(a))


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator that registers ``cls`` as plugin ``name`` of ``kind``.

    Raises ``PluginError`` for a registration it refuses, except while an installed package is
    imported, where the refusal is recorded (``load_failures``) and the class returned as it is.
    """
    if not _collecting:
        _check_kind(kind)
    # Where the registration is made: a built-in part may register a class of the core library
    # (``sds``), and --list names the module that registered it.
    caller = sys._getframe(1).f_globals.get("__name__")

    def decorator(cls: T) -> T:
        origin = _current_origin or caller or getattr(cls, "__module__", "?")
        try:
            if kind not in _registry:
                raise PluginError(
                    f"Plugin {origin} registers {name!r} ({describe_class(cls)}) as a {kind!r}, which is no "
                    f"plugin kind; register it as one of: {', '.join(KINDS)}."
                )
            _add(kind, name, cls, origin)
        except PluginError as exc:
            if not _collecting:
                raise
            _reject(kind, name, str(exc))
        return cls

    return decorator


def register_deferred(kind: str, name: str, deferred: Deferred) -> None:
    """Register built-in part ``name`` of ``kind`` without importing its module (``Deferred``);
    the discovery of built-in parts then skips that module. For kinds that store no structured
    config and check no interface at registration (the system)."""
    _check_kind(kind)
    if kind != "system":
        raise PluginError(f"register_deferred({kind!r}, {name!r}): only a system can be registered deferred.")
    _registry[kind][name] = Entry(deferred, deferred.module)
    _deferred_modules.add(deferred.module)


def _add(kind: str, name: str, cls: type, origin: str) -> None:
    """Check ``cls`` and register it, its structured config first: a registry entry without its
    config (or a config without its entry) would make ``<kind>=<name>`` half work."""
    existing = _registry[kind].get(name)
    if existing is not None and not same_class(existing.cls, cls):
        taken_by = describe_class(existing.cls)
        if existing.origin != getattr(existing.cls, "__module__", None):
            taken_by += f", registered by {existing.origin}"
        raise PluginError(
            f"Plugin {origin} registers {kind} {name!r} ({describe_class(cls)}), but that name is already "
            f"taken by {taken_by}, which keeps it. Rename it in the plugin's @register({kind!r}, ...) call."
        )
    _check_required_methods(kind, name, cls, origin)
    replaced_config = _stored_config(kind, name)
    try:
        store_structured_config(kind, name, cls)
    except Exception as exc:  # noqa: BLE001  (OmegaConf refuses a field type, a default, ...)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PluginError(
            f"Plugin {origin} registers {kind} {name!r} ({describe_class(cls)}), whose Config dataclass "
            f"cannot be a Hydra structured config: {type(exc).__name__}: {first_line}. Give every option a "
            f"type OmegaConf supports (numbers, strings, bools, enums, lists, dicts, dataclasses)."
        ) from None
    _registry[kind][name] = Entry(cls, origin)
    if _undo is not None:
        _undo.append((kind, name, existing, replaced_config))


def _reject(kind: str, name: str, message: str) -> None:
    """Record a refused registration of an installed package, once."""
    message = (
        f"{message} scorelift left this {kind} out; everything else works, the package's other plugins "
        f"included. Fix the package or uninstall it."
    )
    rejection = Rejection(kind, name, message)
    if rejection not in _rejections:
        _rejections.append(rejection)


def _stored_config(kind: str, name: str):
    """The structured config stored for ``kind=name`` (None if none), to put back on undo."""
    from hydra.core.config_store import ConfigStore

    return ConfigStore.instance().repo.get(kind, {}).get(f"{name}.yaml")


def _undo_registrations(undo: list[tuple[str, str, Entry | None, object]]) -> None:
    """Put the registry and the config store back as they were before these registrations."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance().repo
    for kind, name, entry, config in reversed(undo):
        if entry is None:
            _registry[kind].pop(name, None)
        else:
            _registry[kind][name] = entry
        group = store.get(kind, {})
        if config is None:
            group.pop(f"{name}.yaml", None)
        else:
            group[f"{name}.yaml"] = config


# What each kind must implement (the interface's versions raise NotImplementedError).
REQUIRED_METHODS = {
    "geometry": ("scorelift.interfaces.geometry", "Geometry", ("forward",)),
    "renderer": ("scorelift.interfaces.renderer", "Renderer", ("forward",)),
    "background": ("scorelift.interfaces.background", "Background", ("forward",)),
    "guidance": ("scorelift.interfaces.guidance", "Guidance", ("__call__",)),
    "loss": ("scorelift.interfaces.loss", "Loss", ("__call__",)),
    "prior": ("scorelift.interfaces.prior", "DiffusionPrior", ("condition", "encode_images", "decode_latents", "predict_eps")),
    "evaluator": ("scorelift.interfaces.evaluator", "Evaluator", ("applies_to", "measure")),
}


def _check_required_methods(kind: str, name: str, cls: type, origin: str) -> None:
    """PluginError when ``cls`` is not a subclass of its kind's interface or leaves a required
    method unimplemented: caught at registration, not at the first training step."""
    if kind not in REQUIRED_METHODS:
        return
    module_name, base_name, methods = REQUIRED_METHODS[kind]
    base = getattr(importlib.import_module(module_name), base_name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"Plugin {origin} registers {kind} {name!r} ({describe_class(cls)}), which is not a subclass of "
            f"{module_name}.{base_name}; derive it from that interface (docs/plugins.md)."
        )
    missing = [m for m in methods if getattr(cls, m) is getattr(base, m)]
    if missing:
        raise PluginError(
            f"Plugin {origin} registers {kind} {name!r} ({describe_class(cls)}) without implementing "
            f"{', '.join(missing)}; a {kind} must implement {', '.join(methods)} (see {module_name})."
        )
    if kind in ("prior", "guidance"):
        _check_capabilities(kind, name, cls, origin, base)


def _check_capabilities(kind: str, name: str, cls: type, origin: str, base: type) -> None:
    """A prior implements the method of every capability it declares; a guidance requires only
    capabilities that exist (``scorelift.interfaces.prior.CAPABILITIES``)."""
    from .interfaces.prior import CAPABILITIES

    declared = cls.capabilities if kind == "prior" else cls.requires
    unknown = sorted(set(declared) - set(CAPABILITIES))
    if unknown:
        raise PluginError(
            f"Plugin {origin} registers {kind} {name!r} ({describe_class(cls)}) with the unknown prior capability "
            f"{', '.join(unknown)}; declare only these capabilities: {', '.join(CAPABILITIES)}."
        )
    if kind == "prior":
        from .interfaces.prior import DiffusionPrior

        lacking = [c for c in declared if getattr(cls, CAPABILITIES[c]) is getattr(DiffusionPrior, CAPABILITIES[c])]
        if lacking:
            raise PluginError(
                f"Plugin {origin} registers prior {name!r} ({describe_class(cls)}), which declares the capability "
                f"{', '.join(lacking)} without implementing {', '.join(CAPABILITIES[c] for c in lacking)}; "
                f"implement it or drop the capability."
            )


def has_full_defaults(config_cls) -> bool:
    """True for a dataclass whose every field has a default."""
    return dataclasses.is_dataclass(config_cls) and all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(config_cls)
    )


def store_structured_config(kind: str, name: str, cls: type) -> None:
    """Make ``<kind>=<name>`` composable from the part's ``Config`` dataclass alone.

    A part whose ``Config`` gives every option a default (and that ships no YAML of its own) is
    stored in Hydra's ConfigStore as option ``name`` of group ``kind``, with ``type: <name>``:
    ``guidance=<name>`` then composes its defaults, ``guidance.<option>=...`` overrides them and
    ``scorelift --cfg job`` shows them. Systems are composed from presets, not stored.
    """
    config_cls = getattr(cls, "Config", None)
    if kind == "system" or getattr(cls, "config_file", None) is not None or not has_full_defaults(config_cls):
        return
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.structured(config_cls), resolve=False)
    ConfigStore.instance().store(group=kind, name=name, node={"type": name, **defaults}, provider="scorelift")


# The packages of built-in parts, found by name like the entry points of installed ones: the core
# depends on no part (import-linter holds the layers), it only imports them to let them register.
BUILTIN_PACKAGES = ("scorelift.systems", "scorelift.plugins")


def _import_builtin_plugins() -> None:
    for name in BUILTIN_PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if info.name not in _deferred_modules:  # (a package registers its deferred parts first)
                importlib.import_module(info.name)


def entry_point_origin(ep) -> str:
    """``module (package dist version)`` for an entry point; its value alone where no
    distribution is known."""
    dist = getattr(ep, "dist", None)
    return f"{ep.value} (package {dist.name} {dist.version})" if dist else ep.value


def _import_entry_points() -> None:
    """Import every installed plugin package; what fails stays local to that package."""
    global _current_origin, _collecting
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry_point_origin(ep)
        _current_origin, _collecting = origin, True
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:  # a broken third-party plugin must not break the framework
            _load_failures.append(
                f"plugin {ep.name!r} from {origin} failed to import: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall that package; built-in plugins still work."
            )
        finally:
            _current_origin, _collecting = None, False


def local_module_name(path: Path) -> str:
    """The module name of a local plugin file: its stem and a digest of its full path, so two
    files of the same name in different folders are two modules (and their classes differ)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"scorelift_local_{stem}_{digest}"


def load_plugin_file(path: str | Path) -> None:
    """Import a local Python file so that its ``@register`` calls run.

    All or nothing: when the file fails to import or one of its registrations is refused, the
    ``PluginError`` names the file and none of its registrations stays behind.
    """
    global _current_origin, _undo, _collecting
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"Plugin file {str(path)!r} does not exist; `plugins.paths` must list .py files.")
    module_name = local_module_name(path)
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    outer = _current_origin, _undo, _collecting  # a plugin file (or package) may load another file
    _current_origin, _undo, _collecting = str(path), [], False  # a file's refusals raise, wherever loaded
    undo = _undo
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        _undo_registrations(undo)
        if isinstance(exc, PluginError):
            raise PluginError(
                f"{exc} Nothing of {str(path)!r} was registered; fix the file or remove it from `plugins.paths`."
            ) from None
        if not isinstance(exc, Exception):
            raise
        raise PluginError(
            f"Plugin file {str(path)!r} failed to import: {type(exc).__name__}: {exc}. Fix the file "
            f"or remove it from `plugins.paths`."
        ) from exc
    finally:
        _current_origin, _undo, _collecting = outer
    if _undo is not None:  # loaded by another plugin file: undone with it
        _undo.extend(undo)


def discover() -> None:
    """Import built-in plugins and entry-point plugins once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    _import_builtin_plugins()
    _import_entry_points()


def load_failures() -> list[str]:
    """One paragraph for each installed plugin that failed to import or whose registration was
    refused, each once: what ``scorelift --list`` shows and a run logs as a warning. The rest of
    scorelift, and every other plugin of those packages, still works."""
    discover()
    return [*_load_failures, *(r.message for r in _rejections)]


def rejection(kind: str, name: str) -> str | None:
    """Why an installed package's ``name`` of ``kind`` was refused (None if it was not, or if
    another class holds that name now): what choosing that name reports."""
    discover()
    if name in _registry.get(kind, {}):
        return None
    messages = [r.message for r in _rejections if (r.kind, r.name) == (kind, name)]
    return " ".join(messages) or None


def find(kind: str, name: str) -> type:
    """The class registered as ``name`` of ``kind``; a clear error listing the choices otherwise.
    A deferred registration's module is imported here, once."""
    declaration = declared(kind, name)
    if isinstance(declaration, Deferred):
        cls = declaration.load()
        _registry[kind][name] = Entry(cls, declaration.module)
        return cls
    return declaration


def declared(kind: str, name: str):
    """What ``find`` returns, except that a deferred registration (``Deferred``: ``Config``,
    ``check_config``) is returned as it is, its module not imported: what start-up checks read."""
    _check_kind(kind)
    discover()
    entry = _registry[kind].get(name)
    if entry is None:
        refused = rejection(kind, name)
        if refused:
            raise PluginError(f"{kind} {name!r} is not available: its registration was refused. {refused}")
        choices = ", ".join(sorted(_registry[kind])) or "(none)"
        hint = ""
        if _load_failures:
            hint = " Some third-party plugins failed to load: " + " ".join(_load_failures)
        raise PluginError(
            f"Unknown {kind} {name!r}. Available {kind} plugins: {choices}. Pick one of these "
            f"(e.g. `{kind}={sorted(_registry[kind])[0] if _registry[kind] else '...'}`) or install "
            f"the package that provides it.{hint}"
        )
    return entry.cls


def available(kind: str | None = None) -> dict[str, dict[str, Entry]]:
    """Registered plugins, by kind then name."""
    discover()
    kinds = [kind] if kind else list(KINDS)
    for k in kinds:
        _check_kind(k)
    return {k: dict(sorted(_registry[k].items())) for k in kinds}
