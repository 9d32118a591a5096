"""The installed distribution: a wheel built from this checkout, installed (not editable) into a
fresh target folder, holds one top-level import package, ``scorelift``, with its data (configs,
the embedded prior, presets), and runs from an unrelated working directory whose empty
``plugins/`` and ``configs/`` folders must not hide anything: ``--list`` through the console
script and a 3-step run of the main job through ``python -m scorelift``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(".git", ".ci-venv", "outputs", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", "benchmarks", "tests")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """{"target": the install folder, "env": an environment that imports from it first, "cwd": a
    working directory with empty plugins/ and configs/ folders}."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=IGNORED)  # build from a copy: setuptools writes build/ beside it
    wheels = root / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("scorelift-*.whl")
    target = root / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    cwd = root / "elsewhere"
    for folder in ("plugins", "configs"):
        (cwd / folder).mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    return {"target": target, "env": env, "cwd": cwd}


def scorelift(installed: dict, *args: str, script: bool = False) -> subprocess.CompletedProcess:
    command = [str(installed["target"] / "bin" / "scorelift")] if script else [sys.executable, "-m", "scorelift"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=installed["env"], cwd=installed["cwd"])


def test_one_top_level_package_with_its_data(installed):
    target = installed["target"]
    top = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info"))
    assert top == ["bin", "scorelift"], top
    assert sorted(p.name for p in (target / "bin").iterdir()) == ["scorelift", "scorelift-bench"]
    package = target / "scorelift"
    for data in ("configs/config.yaml", "configs/system/sjc.yaml", "shapes_world/configs/prior/shapes.yaml",
                 "shapes_world/configs/preset/shapes_sjc.yaml", "shapes_world/configs/part_preset/guidance/shapes_sjc_paas.yaml",
                 "shapes_world/prior/unet/diffusion_pytorch_model.safetensors", "shapes_world/prior/tokenizer/vocab.json",
                 "shapes_world/pixel_prior/unet/diffusion_pytorch_model.safetensors", "shapes_world/pixel_prior/model_index.json",
                 "benchmark/presets/ci.yaml"):
        assert (package / data).is_file(), data
    where = subprocess.run([sys.executable, "-c", "import scorelift, scorelift.plugins; print(scorelift.__file__); "
                            "print(scorelift.plugins.__file__)"], capture_output=True, text=True,
                           env=installed["env"], cwd=installed["cwd"])
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(package) for line in where.stdout.split()), where.stdout


def test_list_from_an_unrelated_directory(installed):
    listed = scorelift(installed, "--list", script=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ("paas", "sds", "ssd", "vsd", "voxel-grid", "hash-grid", "stable-diffusion", "shapes-world"):
        assert f"  {name} " in listed.stdout, name
    # the presets as users type them, each with its one line; every part with one too
    for preset in ("sjc", "dreamfusion", "prolificdreamer", "magic3d", "gaussian", "dreamgaussian"):
        (line,) = [ln for ln in listed.stdout.splitlines() if ln.startswith(f"  {preset} ")]
        assert len(line.split(None, 1)[1]) > 20, line
    assert "  shapes " in listed.stdout and "  pixel-cubes " in listed.stdout  # the prior presets
    part_lines = [ln for ln in listed.stdout.splitlines() if ln.startswith("  ") and ln.endswith("]")]
    assert len(part_lines) >= 27 and all(ln.split(None, 1)[1].split("  [")[0].endswith(".") for ln in part_lines)
    bench = subprocess.run([str(installed["target"] / "bin" / "scorelift-bench"), "--help"], capture_output=True,
                           text=True, env=installed["env"], cwd=installed["cwd"])
    assert bench.returncode == 0 and bench.stdout.startswith("usage: scorelift-bench"), bench.stderr[-2000:]
    assert "ci" in bench.stdout and "full" in bench.stdout  # the presets shipped inside the package


def test_three_steps_of_the_main_job(installed, tmp_path):
    run_dir = tmp_path / "run"
    out = scorelift(installed, "system=sjc", "guidance=paas", "trainer.max_steps=3", "trainer.progress_bar=false",
                    "system.views.n_frames=2", "device=cpu", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"iou", "colour_error", "identification"}
    config = (run_dir / "config.yaml").read_text()
    assert str(installed["target"] / "scorelift" / "shapes_world" / "prior") in config
    assert "guidance_scale: 10.0" in config and "resolution: 48" in config  # the shapes presets applied
    assert [list(installed["cwd"].joinpath(folder).iterdir()) for folder in ("plugins", "configs")] == [[], []]
