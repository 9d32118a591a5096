"""The plugin API is a promise: frozen copies of plugins written against earlier documented versions
of it (tests/data/frozen_plugins/, never edited) are installed, listed, composed and trained on the
tiny pipeline through the real launcher. A change of scorelift that breaks one fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
FROZEN = REPO / "tests" / "data" / "frozen_plugins"
PACKAGES = {  # entry-point package -> (folder, guidance name, distribution and version as --list shows it)
    "scaled-sds": (FROZEN / "2026-11-29" / "scorelift-scaled-sds", "scorelift-scaled-sds 0.3.1"),
    "normalized-sds": (FROZEN / "2026-12-07" / "scorelift-normalized-sds", "scorelift-normalized-sds 0.1.0"),
}
ONE_FILE = FROZEN / "2026-12-07" / "one_file_guidance.py"
TINY_RUN = [  # a dreamfusion run on the conftest tiny pipeline (8x8 latents), 3 steps
    "system=dreamfusion", "prior=stable-diffusion", "trainer.max_steps=3", "trainer.progress_bar=false",
    "geometry.resolution=12", "geometry.bbox_radius=1.0", "renderer.step_size=0.04", "data.height=16",
    "data.width=16", "system.views.resolution=16", "system.views.n_frames=2", "device=cpu",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Both frozen packages pip-installed into one folder on PYTHONPATH (the test environment
    itself is left as it was); built from copies, since setuptools writes beside the sources."""
    target = tmp_path_factory.mktemp("site")
    sources = tmp_path_factory.mktemp("src")
    copies = []
    for folder, _ in PACKAGES.values():
        copies.append(sources / folder.name)
        shutil.copytree(folder, copies[-1], ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), *map(str, copies)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO)]), OMP_NUM_THREADS="1")


def launch(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_every_frozen_package_is_listed_and_none_failed(env):
    out = launch(["--list"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    for name, (_, dist) in PACKAGES.items():
        line = next(l for l in out.stdout.splitlines() if f" {name} " in f" {l} ")
        assert dist in line, line
    assert "failed to load" not in out.stdout + out.stderr, out.stdout


def test_yaml_defaults_of_a_config_without_defaults_compose(env):
    """The 2026-11-29 package declares its options without defaults in a subclass of SDSConfig (whose
    fields have defaults): its YAML file's values compose, beside SDS's own defaults."""
    out = launch(["--cfg", "job", "guidance=scaled-sds", "guidance.strength=0.25"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    guidance = yaml.safe_load(out.stdout)["guidance"]
    assert guidance["type"] == "scaled-sds" and guidance["mode"] == "constant" and guidance["strength"] == 0.25


def test_a_bad_value_is_refused_by_the_plugins_own_check(env, tmp_path):
    out = launch([*TINY_RUN, "guidance=scaled-sds", "guidance.mode=sideways", "prior.model=unused",
                  f"hydra.run.dir={tmp_path / 'run'}"], env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "guidance.mode='sideways' must be one of constant, by-t." in out.stderr
    assert not (tmp_path / "run").exists()


EXAMPLES = REPO / "examples"
TRAINED = [  # (guidance, options, the frozen source)
    ("scaled-sds", ["guidance.mode=by-t"], PACKAGES["scaled-sds"][0]),  # its YAML's strength, a mode from the command line
    ("normalized-sds", ["guidance.target_rms=0.5"], PACKAGES["normalized-sds"][0]),
    ("rms-sds", [f"plugins.paths=[{ONE_FILE}]", "guidance.target_rms=0.5"], ONE_FILE),
]


def same_as_an_example(frozen: Path) -> bool:
    """Whether a frozen copy is, file for file, today's example of the same name, which
    tests/parts/test_plugin_example.py trains already."""
    live = EXAMPLES / frozen.name
    if frozen.is_file():
        return live.is_file() and live.read_bytes() == frozen.read_bytes()
    files = sorted(p.relative_to(frozen) for p in frozen.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return live.is_dir() and all((live / f).is_file() and (live / f).read_bytes() == (frozen / f).read_bytes()
                                 for f in files)


def test_the_examples_of_the_docs_are_frozen_as_they_are():
    """Every example of docs/plugins.md has a frozen copy identical to it (a changed example is
    frozen again, dated, so the plugins written to the earlier docs keep being trained here)."""
    for example in (ONE_FILE, PACKAGES["normalized-sds"][0]):
        assert any(same_as_an_example(copy) for copy in FROZEN.glob(f"*/{example.name}")), example.name


@pytest.mark.parametrize("guidance, options", [(g, o) for g, o, source in TRAINED if not same_as_an_example(source)])
def test_each_frozen_plugin_trains(env, tiny_pipeline_dir, tmp_path, guidance, options):
    run_dir = tmp_path / "run"
    out = launch([*TINY_RUN, f"guidance={guidance}", *options, f"prior.model={tiny_pipeline_dir}",
                  f"hydra.run.dir={run_dir}"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["guidance"]
    assert saved["type"] == guidance
    if guidance == "scaled-sds":
        assert saved["mode"] == "by-t" and saved["strength"] == 0.5
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


ONE_FILE_RENDERER = FROZEN / "2026-12-07" / "one_file_renderer.py"


def test_a_renderer_of_the_earlier_api_trains_with_a_deprecation_warning(env, tiny_pipeline_dir, tmp_path):
    """A renderer written when renderers took rays (forward(geometry, background, rays_o, rays_d,
    generator)) still trains, given its rays from the camera batch, and its author is told once, as
    docs/plugins.md section 6 promises, what replaces the old form and when the old form goes."""
    run_dir = tmp_path / "run"
    volume_options = [o for o in TINY_RUN if not o.startswith("renderer.")]
    out = launch([*volume_options, "guidance=sds", f"plugins.paths=[{ONE_FILE_RENDERER}]", "renderer=few-samples",
                  "renderer.n_samples=24", f"prior.model={tiny_pipeline_dir}", f"hydra.run.dir={run_dir}"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("FutureWarning: Renderer") == 1, out.stderr[-3000:]
    assert "the renderer API before scorelift 0.2; renderers now receive the camera batch" in out.stderr
    assert "The old form works until 0.3" in out.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
