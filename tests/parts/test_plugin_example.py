"""The example plugins: the installable package examples/scorelift-normalized-sds, pip-installed into a
folder on PYTHONPATH (so the test environment itself is left as it was), found through its
entry point, its packaged config composed by `guidance=normalized-sds`, and 10 steps run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "scorelift-normalized-sds"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    target = tmp_path_factory.mktemp("site")
    # build from a copy: setuptools leaves build/ and *.egg-info beside the sources
    source = tmp_path_factory.mktemp("src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO)]), OMP_NUM_THREADS="1")
    return env


def launch(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_listing_shows_the_plugin_with_its_package(installed):
    out = launch(["--list"], installed)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(l for l in out.stdout.splitlines() if "normalized-sds" in l)
    assert "scorelift-normalized-sds 0.1.0" in line


def test_ten_steps_with_the_installed_guidance(installed, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    out = launch([
        "system=dreamfusion", "guidance=normalized-sds", "guidance.target_rms=0.5", "prior=stable-diffusion",
        f"prior.model={tiny_pipeline_dir}", "trainer.max_steps=10", "trainer.progress_bar=false",
        "geometry.resolution=12", "geometry.bbox_radius=1.0", "renderer.step_size=0.04",
        "data.height=16", "data.width=16", "system.views.resolution=16",
        "system.views.n_frames=2", "device=cpu", f"hydra.run.dir={run_dir}",
    ], installed)
    assert out.returncode == 0, out.stderr[-3000:]
    config = (run_dir / "config.yaml").read_text()
    assert "type: normalized-sds" in config and "target_rms: 0.5" in config
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 10
    assert json.loads((run_dir / "timing.json").read_text())["steps_timed"] == 5


ONE_FILE = REPO / "examples" / "one_file_guidance.py"


def test_the_one_file_guidance_of_the_docs(tiny_pipeline_dir, tmp_path):
    """docs/plugins.md's one-file guidance, copied from the docs into an unrelated folder: loaded by
    plugins.paths, it is an option of the guidance group whose defaults the composed config shows
    and whose own check refuses a bad value (in this process); a 4-step run through the real
    launcher, from that folder, trains with it."""
    from omegaconf import OmegaConf

    from scorelift.checks import check_part
    from scorelift.compose import compose_config
    from scorelift.errors import ConfigError

    docs = (REPO / "docs" / "plugins.md").read_text()
    code = ONE_FILE.read_text()
    assert f"```python\n{code}```" in docs  # the docs show exactly the tested file
    assert len(code.splitlines()) < 30
    work = tmp_path / "work"
    work.mkdir()
    plugin = work / "one_file_guidance.py"
    plugin.write_text(code)
    load = f"plugins.paths=[{plugin}]"
    shown = OmegaConf.to_container(compose_config([load, "guidance=rms-sds"], with_hydra=False)["guidance"])
    assert shown["type"] == "rms-sds" and shown["target_rms"] == 1.0 and shown["guidance_scale"] == 100.0
    with pytest.raises(ConfigError, match=r"guidance.target_rms=-1.0 must be positive"):
        check_part("guidance", {**shown, "target_rms": -1.0}, "guidance")
    run_dir = tmp_path / "run"
    out = subprocess.run([
        sys.executable, "-m", "scorelift", "plugins.paths=[./one_file_guidance.py]",
        "system=dreamfusion", "guidance=rms-sds", "guidance.target_rms=0.5", "prior=stable-diffusion",
        f"prior.model={tiny_pipeline_dir}", "trainer.max_steps=4", "trainer.progress_bar=false",
        "geometry.resolution=12", "geometry.bbox_radius=1.0", "renderer.step_size=0.04",
        "data.height=16", "data.width=16", "system.views.resolution=16", "system.views.n_frames=2",
        "device=cpu", f"hydra.run.dir={run_dir}",
    ], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    config = (run_dir / "config.yaml").read_text()
    assert "type: rms-sds" in config and "target_rms: 0.5" in config
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert not (work / "outputs").exists()  # hydra.run.dir was honoured: nothing written beside the plugin
