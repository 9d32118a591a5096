"""Per-kind plugin registries.

Every part is a class registered under a kind and a name::

    @register("guidance", "sds")
    class SDSGuidance(Guidance): ...

``find(kind, name)`` returns the class, importing the built-in ``plugins`` package, the
modules named by the ``scorelift.plugins`` entry-point group and any local plugin files first.
Unknown names fail with a message that lists what exists.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from scorelift.errors import PluginError

KINDS = ("system", "geometry", "renderer", "background", "guidance", "loss", "prior", "evaluator")
ENTRY_POINT_GROUP = "scorelift.plugins"

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Entry:
    """A registered class and where it came from (module and distribution, if any)."""

    cls: type
    origin: str


_registry: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_discovered = False
_current_origin: str | None = None  # set while an entry point or local file is imported
_load_failures: list[str] = []


def _check_kind(kind: str) -> None:
    if kind not in _registry:
        raise PluginError(f"Unknown plugin kind {kind!r}; the kinds are: {', '.join(KINDS)}.")


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator that registers ``cls`` as plugin ``name`` of ``kind``."""
    _check_kind(kind)

    def decorator(cls: T) -> T:
        origin = _current_origin or cls.__module__
        existing = _registry[kind].get(name)
        if existing is not None and existing.cls.__qualname__ != cls.__qualname__:
            raise PluginError(
                f"Plugin {origin!r} registers {kind} {name!r}, but that name is already taken by "
                f"{existing.cls.__module__}.{existing.cls.__qualname__} (from {existing.origin}). "
                f"Rename it in the plugin's @register({kind!r}, ...) call."
            )
        _check_required_methods(kind, name, cls, origin)
        _registry[kind][name] = Entry(cls, origin)
        store_structured_config(kind, name, cls)
        return cls

    return decorator


# What each kind must implement (the interface's versions raise NotImplementedError).
REQUIRED_METHODS = {
    "geometry": ("scorelift.interfaces.geometry", "Geometry", ("forward",)),
    "renderer": ("scorelift.interfaces.renderer", "Renderer", ("forward",)),
    "background": ("scorelift.interfaces.background", "Background", ("forward",)),
    "guidance": ("scorelift.interfaces.guidance", "Guidance", ("__call__",)),
    "loss": ("scorelift.interfaces.loss", "Loss", ("__call__",)),
    "prior": ("scorelift.interfaces.prior", "DiffusionPrior", ("encode_text", "condition", "encode_images", "decode_latents", "predict_eps")),
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
            f"Plugin {origin!r} registers {kind} {name!r} with {getattr(cls, '__qualname__', cls)!r}, which is not a "
            f"subclass of {module_name}.{base_name}; derive it from that interface (docs/plugins.md)."
        )
    missing = [m for m in methods if getattr(cls, m) is getattr(base, m)]
    if missing:
        raise PluginError(
            f"Plugin {origin!r} registers {kind} {name!r} ({cls.__qualname__}) without implementing "
            f"{', '.join(missing)}; a {kind} must implement {', '.join(methods)} (see {module_name})."
        )
    if kind in ("prior", "guidance"):
        _check_capabilities(kind, name, cls, origin, base)


def _check_capabilities(kind: str, name: str, cls: type, origin: str, base: type) -> None:
    """A prior implements the method of every capability it declares; a guidance requires only
    capabilities that exist (``scorelift.interfaces.prior.CAPABILITIES``)."""
    from scorelift.interfaces.prior import CAPABILITIES

    declared = cls.capabilities if kind == "prior" else cls.requires
    unknown = sorted(set(declared) - set(CAPABILITIES))
    if unknown:
        raise PluginError(
            f"Plugin {origin!r} registers {kind} {name!r} ({cls.__qualname__}) with the unknown prior capability "
            f"{', '.join(unknown)}; the capabilities are: {', '.join(CAPABILITIES)}."
        )
    if kind == "prior":
        from scorelift.interfaces.prior import DiffusionPrior

        lacking = [c for c in declared if getattr(cls, CAPABILITIES[c]) is getattr(DiffusionPrior, CAPABILITIES[c])]
        if lacking:
            raise PluginError(
                f"Plugin {origin!r} registers prior {name!r} ({cls.__qualname__}), which declares the capability "
                f"{', '.join(lacking)} without implementing {', '.join(CAPABILITIES[c] for c in lacking)}."
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


def _import_builtin_plugins() -> None:
    import scorelift.systems
    import scorelift.plugins

    for package in (scorelift.systems, scorelift.plugins):
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            importlib.import_module(info.name)


def _import_entry_points() -> None:
    global _current_origin
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"{ep.value} (package {dist.name} {dist.version})" if dist else ep.value
        _current_origin = origin
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except PluginError:
            raise
        except Exception as exc:  # a broken third-party plugin must not break the framework
            _load_failures.append(
                f"plugin {ep.name!r} from {origin} failed to import: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall that package; built-in plugins still work."
            )
        finally:
            _current_origin = None


def load_plugin_file(path: str | Path) -> None:
    """Import a local Python file so that its ``@register`` calls run."""
    global _current_origin
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"Plugin file {str(path)!r} does not exist; `plugins.paths` must list .py files.")
    module_name = f"scorelift_local_{path.stem}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    _current_origin = str(path)
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except PluginError:
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginError(
            f"Plugin file {str(path)!r} failed to import: {type(exc).__name__}: {exc}. Fix the file "
            f"or remove it from `plugins.paths`."
        ) from exc
    finally:
        _current_origin = None


def discover() -> None:
    """Import built-in plugins and entry-point plugins once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    _import_builtin_plugins()
    _import_entry_points()


def load_failures() -> list[str]:
    """Messages of third-party plugins that failed to import (the rest still work)."""
    discover()
    return list(_load_failures)


def find(kind: str, name: str) -> type:
    """The class registered as ``name`` of ``kind``; a clear error listing the choices otherwise."""
    _check_kind(kind)
    discover()
    entry = _registry[kind].get(name)
    if entry is None:
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
