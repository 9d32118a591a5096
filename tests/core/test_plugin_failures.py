"""Plugins whose registration is refused stay local.

An installed package (entry point ``scorelift.plugins``) that registers a taken name, a class of
the wrong base, a class missing its required method, an unknown prior capability or an unknown
kind, beside one valid guidance: the package is pip-installed into a folder on PYTHONPATH, and
the real ``launch.py`` lists the valid guidance and reports each refusal once, runs a built-in
guidance and the package's valid one, and fails at start-up (exit 2, one paragraph, nothing
written) for each refused name. The built-in ``sds`` keeps its class and its config.

launch.py starts in about 7 s, so the launcher cases run in one subprocess that executes
launch.py as ``__main__`` once per case (tests/run_cases.py: the code path of ``python launch.py``), as
tests/run/test_bad_input.py does. Collisions and local plugin files are tested in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scorelift import registry
from scorelift.errors import ConfigError, PluginError
from scorelift.library.sds import SDSGuidance as BuiltinSDS
from tests.launching import error_paragraph
from tests.run.test_system import small_run_overrides

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
LATENT = 8  # the conftest tiny pipeline: 8 x 8 latents
PACKAGE, VERSION, MODULE = "scorelift-faulty-plugins", "0.3.1", "scorelift_faulty_plugins.guidance"
GOOD = "faulty-good-sds"

# The package's one module: five refused registrations first, then a valid one, so the valid one
# is registered only if the refusals before it let the module's import go on.
PLUGIN_MODULE = '''
from dataclasses import dataclass

from scorelift import Guidance, SDSConfig, SDSGuidance as BuiltinSDS, register


@dataclass
class ForeignSDSConfig(SDSConfig):
    foreign_marker: int = 1  # shows up in guidance=sds's config if this class took the name


@register("guidance", "sds")
class SDSGuidance(BuiltinSDS):
    """A third-party class named like the built-in one."""

    Config = ForeignSDSConfig


@register("guidance", "faulty-not-a-guidance")
class NotAGuidance:
    """Derives from no interface."""


@register("guidance", "faulty-no-call")
class NoCall(Guidance):
    """Implements no __call__."""


@register("guidance", "faulty-telepathic")
class Telepathic(BuiltinSDS):
    """Requires a prior capability that does not exist."""

    requires = frozenset({"telepathy"})


@register("widget", "faulty-gizmo")
class Gizmo(BuiltinSDS):
    """Registered under a kind that does not exist."""


@register("guidance", "faulty-good-sds")
class GoodSDS(BuiltinSDS):
    """The package's valid guidance."""
'''

# (refused name, its class, words of the reason and of the fix)
REFUSED = [
    ("sds", "SDSGuidance", ["already taken by class SDSGuidance in module scorelift.library.sds, registered by scorelift.plugins.guidance.sds",
                            "which keeps it", "Rename it in the plugin's @register('guidance', ...) call"]),
    ("faulty-not-a-guidance", "NotAGuidance", ["not a subclass of scorelift.interfaces.guidance.Guidance",
                                               "derive it from that interface"]),
    ("faulty-no-call", "NoCall", ["without implementing __call__", "a guidance must implement __call__"]),
    ("faulty-telepathic", "Telepathic", ["unknown prior capability telepathy",
                                         "declare only these capabilities: trainable_denoiser"]),
    ("faulty-gizmo", "Gizmo", ["as a 'widget', which is no plugin kind", "register it as one of: system, geometry"]),
]
PACKAGE_WORDS = [f"Plugin {MODULE} (package {PACKAGE} {VERSION})", "Fix the package or uninstall it",
                 "the package's other plugins included"]

# What the registry of the process that ran the cases holds (a probe case of tests/run_cases.py).
REGISTRY_PROBE = """
from scorelift import registry
from scorelift.library.sds import SDSGuidance
from scorelift.errors import PluginError
try:
    registry.find("guidance", "faulty-no-call")
    found = None
except PluginError as exc:
    found = str(exc)
result = {"sds_is_builtin": registry.find("guidance", "sds") is SDSGuidance,
          "failures": registry.load_failures(), "find_refused": found}
"""


def build_package(root: Path) -> Path:
    """The source of a real plugin distribution, like examples/scorelift-normalized-sds."""
    source = root / PACKAGE
    package = source / MODULE.split(".")[0]
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "guidance.py").write_text(PLUGIN_MODULE)
    (source / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{PACKAGE}"
        version = "{VERSION}"

        [project.entry-points."scorelift.plugins"]
        faulty = "{MODULE}"

        [tool.setuptools]
        packages = ["{package.name}"]
        """))
    return source


@pytest.fixture(scope="module")
def results(tiny_pipeline_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faulty")
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(build_package(root / "src"))],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    def run(guidance: str) -> list[str]:  # two steps on the tiny pipeline
        return [*small_run_overrides(tiny_pipeline_dir, LATENT, "dreamfusion", guidance, 2), "system.views.n_frames=2"]

    cases = [
        {"id": "list", "args": ["--list"]},
        {"id": "builtin", "args": [*run("sds")]},
        {"id": "good", "args": [*run(GOOD)]},
        {"id": "group-no-call", "args": [*run("faulty-no-call")]},
        {"id": "type-not-a-guidance", "args": [*run("sds"), "guidance.type=faulty-not-a-guidance"]},
        {"id": "group-telepathic", "args": ["--cfg", "job", "guidance=faulty-telepathic"]},
        {"id": "type-telepathic", "args": [*run("sds"), "guidance.type=faulty-telepathic"]},
    ]
    for case in cases:
        case["dir"] = str(root / "runs" / case["id"])
        case["args"].append(f"hydra.run.dir={case['dir']}")
    (root / "cases.json").write_text(json.dumps([*cases, {"id": "registry", "probe": REGISTRY_PROBE}]))
    out_file = root / "results.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO)]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "run_cases.py"), str(root / "cases.json"), str(out_file),
                           str(REPO / "launch.py")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(out_file.read_text())
    return {**{c["id"]: {**c, **found[c["id"]]} for c in cases}, "registry": found["registry"]}


def refusal_of(name: str, cls: str) -> str:
    """The words that name the refused plugin (a registration under an unknown kind has no kind)."""
    kind = "" if name == "faulty-gizmo" else "guidance "
    return f"registers {kind}{name!r} (class {cls} in module {MODULE})"


def test_the_listing_shows_the_valid_plugin_and_each_refusal_once(results):
    listing = results["list"]
    assert listing["code"] == 0, listing["stderr"][-3000:]
    out = listing["stdout"]
    good = next(line for line in out.splitlines() if line.strip().startswith(GOOD))
    assert f"[{MODULE} (package {PACKAGE} {VERSION})]" in good
    sds = next(line for line in out.splitlines() if line.strip().startswith("sds "))
    assert sds.endswith("[scorelift.plugins.guidance.sds]"), sds  # the built-in keeps the name
    failures = out.split("plugins that failed to load:\n", 1)[1].splitlines()
    assert len(failures) == len(REFUSED), failures
    for name, cls, words in REFUSED:
        (line,) = [f for f in failures if refusal_of(name, cls) in f]
        assert out.count(refusal_of(name, cls)) == 1
        for word in [*PACKAGE_WORDS, *words]:
            assert word in line, (word, line)
    for name in ("faulty-not-a-guidance", "faulty-no-call", "faulty-telepathic", "faulty-gizmo"):
        assert f"  {name} " not in out  # not listed among the registered parts
    assert "Traceback" not in listing["stderr"]


def test_a_builtin_and_the_packages_valid_guidance_still_run(results):
    for cid, guidance in (("builtin", "sds"), ("good", GOOD)):
        result = results[cid]
        assert result["code"] == 0, result["stderr"][-3000:]
        run_dir = Path(result["dir"])
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        config = (run_dir / "config.yaml").read_text()
        assert f"type: {guidance}" in config
        assert "foreign_marker" not in config  # guidance=sds composed the built-in's config
        log = (run_dir / "launch.log").read_text()  # the run's log names each refusal, once
        assert log.count("registers guidance 'faulty-not-a-guidance'") == 1
        assert log.count("registers guidance 'sds' (class SDSGuidance in module scorelift_faulty_plugins") == 1


@pytest.mark.parametrize("cid, given, name, cls", [
    ("group-no-call", "guidance=faulty-no-call", "faulty-no-call", "NoCall"),
    ("type-not-a-guidance", "guidance.type='faulty-not-a-guidance'", "faulty-not-a-guidance", "NotAGuidance"),
    ("group-telepathic", "guidance=faulty-telepathic", "faulty-telepathic", "Telepathic"),
    ("type-telepathic", "guidance.type='faulty-telepathic'", "faulty-telepathic", "Telepathic"),
])
def test_choosing_a_refused_plugin_fails_at_start_up_with_its_message(results, cid, given, name, cls):
    result = results[cid]
    assert result["code"] == 2, result["stderr"][-3000:]
    message = error_paragraph(result)
    assert message.startswith(f"scorelift: error: {given}")
    (words,) = [w for n, _, w in REFUSED if n == name]
    listed = next(f for f in results["registry"]["failures"] if refusal_of(name, cls) in f)
    assert listed in message  # the same message as --list
    for word in [refusal_of(name, cls), *PACKAGE_WORDS, *words]:
        assert word in message, (word, message)
    assert not Path(result["dir"]).exists()


def test_the_builtin_sds_keeps_its_class_and_the_registry_says_why(results):
    state = results["registry"]
    assert state["sds_is_builtin"]
    assert len(state["failures"]) == len(REFUSED)
    assert state["find_refused"].startswith("guidance 'faulty-no-call' is not available: its registration was refused.")
    assert "without implementing __call__" in state["find_refused"]


# ------------------------------------------------------------------------------ in this process
@pytest.fixture
def restored_registry():
    """The registry, its refusals and the plugin kinds' structured configs as they were, after
    the test (the rest of Hydra's config store is Hydra's own, left alone)."""
    from hydra.core.config_store import ConfigStore

    registry.discover()
    store = ConfigStore.instance().repo
    entries = {kind: dict(by_name) for kind, by_name in registry._registry.items()}
    rejections = list(registry._rejections)
    configs = {kind: dict(store[kind]) for kind in registry.KINDS if kind in store}
    yield
    for kind in registry.KINDS:
        registry._registry[kind] = entries[kind]
        if kind in configs:
            store[kind].clear()
            store[kind].update(configs[kind])
        else:
            store.pop(kind, None)
    registry._rejections[:] = rejections


def stored_guidance(name: str):
    from hydra.core.config_store import ConfigStore

    return ConfigStore.instance().repo["guidance"].get(f"{name}.yaml")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


class SDSGuidance(BuiltinSDS):
    """The built-in's __qualname__, in another module (registered by the test below)."""


def test_a_class_named_like_a_builtin_does_not_replace_it(restored_registry):
    before = stored_guidance("sds")
    assert SDSGuidance.__qualname__ == BuiltinSDS.__qualname__
    with pytest.raises(PluginError) as err:
        registry.register("guidance", "sds")(SDSGuidance)
    message = str(err.value)
    assert f"class SDSGuidance in module {__name__}" in message
    assert "already taken by class SDSGuidance in module scorelift.library.sds, registered by scorelift.plugins.guidance.sds" in message
    assert registry.find("guidance", "sds") is BuiltinSDS and stored_guidance("sds") is before


def test_the_same_class_registers_again_and_a_rerun_module_replaces_its_own(restored_registry, tmp_path):
    registry.register("guidance", "sds")(BuiltinSDS)  # the very same object: no collision
    assert registry.find("guidance", "sds") is BuiltinSDS
    plugin = write(tmp_path / "again.py", '''
        from scorelift import SDSGuidance, register

        @register("guidance", "test-again")
        class Again(SDSGuidance):
            pass
        ''')
    registry.load_plugin_file(plugin)
    first = registry.find("guidance", "test-again")
    sys.modules.pop(registry.local_module_name(plugin.resolve()))  # the file imported a second time
    registry.load_plugin_file(plugin)
    second = registry.find("guidance", "test-again")
    assert second is not first and (second.__module__, second.__qualname__) == (first.__module__, first.__qualname__)


def test_two_local_files_of_one_name_are_two_modules_and_collide(restored_registry, tmp_path):
    code = '''
        from scorelift import SDSGuidance, register

        @register("guidance", "test-twin")
        class Twin(SDSGuidance):
            pass
        '''
    first, second = write(tmp_path / "a" / "twin.py", code), write(tmp_path / "b" / "twin.py", code)
    registry.load_plugin_file(first)
    with pytest.raises(PluginError) as err:
        registry.load_plugin_file(second)
    message = str(err.value)
    assert f"Plugin {second.resolve()} registers guidance 'test-twin'" in message and "already taken" in message
    assert registry.find("guidance", "test-twin").__module__ == registry.local_module_name(first.resolve())


def test_a_refused_local_file_leaves_nothing_registered(restored_registry, tmp_path):
    """The file's valid registration before the refused one is undone too, with its structured
    config and its module; once fixed, the same file loads."""
    from scorelift.compose import compose_config

    text = '''
        from scorelift import SDSGuidance, register

        @register("guidance", "test-local-good")
        class LocalGood(SDSGuidance):
            pass

        @register("guidance", "paas")
        class Taken(SDSGuidance):
            pass
        '''
    plugin = write(tmp_path / "half.py", text)
    with pytest.raises(PluginError) as err:
        registry.load_plugin_file(plugin)
    message = str(err.value)
    assert "registers guidance 'paas'" in message and "already taken" in message
    assert f"Nothing of {str(plugin.resolve())!r} was registered" in message and "plugins.paths" in message
    assert "test-local-good" not in registry.available("guidance")["guidance"]
    assert stored_guidance("test-local-good") is None
    assert registry.local_module_name(plugin.resolve()) not in sys.modules
    assert registry.find("guidance", "paas").__module__ == "scorelift.plugins.guidance.paas"
    with pytest.raises(ConfigError, match="guidance=test-local-good: the config group 'guidance' has no option"):
        compose_config(["guidance=test-local-good"], with_hydra=False)
    with pytest.raises(PluginError, match=r"Nothing of .*half.py' was registered"):  # what the launcher reports
        compose_config([f"plugins.paths=[{plugin}]", "guidance=test-local-good"], with_hydra=False)

    plugin.write_text(textwrap.dedent(text).replace('"paas"', '"test-local-other"'))
    registry.load_plugin_file(plugin)
    assert {"test-local-good", "test-local-other"} <= set(registry.available("guidance")["guidance"])
    assert stored_guidance("test-local-good") is not None
