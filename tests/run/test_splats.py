"""Gaussian splat runs (``system=gaussian``, ``system=dreamgaussian``), real launches on the tiny
Stable-Diffusion pipeline: densification during the run, a SIGTERM between two densifications
resuming to the uninterrupted run's Gaussians bit for bit, the 3DGS .ply export read back with
plyfile field by field and started from again, every guidance on the splats, and the splats
turned into a DMTet mesh as the second stage."""

from __future__ import annotations

import csv
import json
import signal
import sys

import numpy as np
import pytest
import torch
import yaml

from tests.launching import REPO, launch, same_weights, start, wait_for_checkpoint

pytestmark = pytest.mark.subprocess

STEPS = 14


def splat_args(pipeline, run_dir, *extra: str, system: str = "gaussian") -> list[str]:
    """A splat run on the tiny pipeline (16 x 16 pixels): 150 Gaussians, opaque enough to draw a
    surface, densified after steps 4, 8 and 12 with a threshold so low that every Gaussian drawn
    clones or splits (up to 1000), opacities reset at step 6."""
    return [sys.executable, str(REPO / "launch.py"), f"system={system}", "prior=stable-diffusion",
            f"prior.model={pipeline}", "device=cpu", "evaluators=[]", "trainer.progress_bar=false",
            "trainer.checkpoint_every=2", "trainer.log_every_n_steps=1", "data.height=16", "data.width=16", "system.views.resolution=16",
            "system.views.n_frames=2", f"trainer.max_steps={STEPS}", "geometry.n_gaussians=150",
            "geometry.max_gaussians=1000", "geometry.init_opacity=0.5", "geometry.init_scale=0.08",
            "geometry.densify_from=0", "geometry.densify_until=13", "geometry.densify_every=4",
            "geometry.densify_grad_threshold=1e-6", "geometry.opacity_reset_every=6", "geometry.reset_opacity=0.3",
            f"hydra.run.dir={run_dir}", *extra]


def counts(run_dir) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return [float(r["train/n_gaussians"]) for r in csv.DictReader(f) if r.get("train/n_gaussians")]


@pytest.fixture(scope="module")
def straight(tiny_pipeline_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gaussian") / "run"
    done = launch(splat_args(tiny_pipeline_dir, run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_a_splat_run_densifies_as_it_trains(straight):
    state = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == STEPS
    n = state["state_dict"]["geometry.means"].shape[0]
    seen = counts(straight)
    assert len(seen) == STEPS and seen[0] == 150 and seen[-1] == n
    # every Gaussian drawn reaches the threshold: each round clones them all, until the cap
    assert seen[:4] == [150] * 4 and seen[4] > 150 and seen[8] > seen[4] and seen[12] == 1000
    for name in ("log_scales", "quats", "opacity_logits", "sh_dc", "grad_accum", "seen"):
        assert state["state_dict"][f"geometry.{name}"].shape[0] == n, name


def test_a_stop_between_densifications_resumes_to_the_uninterrupted_gaussians(straight, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(splat_args(tiny_pipeline_dir, run_dir))
    wait_for_checkpoint(proc, run_dir, 6, timeout=300)  # after the round at step 4, before the one at 8
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    step = stopped["global_step"]
    assert 6 <= step < STEPS
    seen = stopped["state_dict"]["geometry.seen"].sum()
    # between two rounds the one in progress has gathered gradients; at a round (step 8 or 12, where
    # the signal may land) the checkpoint holds the Gaussians after it, their statistics cleared
    assert seen > 0 if step % 4 else seen == 0
    again = launch([sys.executable, str(REPO / "launch.py"), f"resume={run_dir}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert same_weights(run_dir / "checkpoints" / "last.ckpt", straight / "checkpoints" / "last.ckpt")


def test_a_run_killed_after_a_checkpoint_at_a_densification_step_resumes_to_the_same_gaussians(straight,
                                                                                               tiny_pipeline_dir,
                                                                                               tmp_path):
    """Checkpoints every 4 steps, densification after steps 4, 8 and 12: every checkpoint is written
    at a densification step, so it must hold that step's Gaussians after their round, or the resumed
    run would skip it."""
    run_dir = tmp_path / "run"
    args = [a.replace("checkpoint_every=2", "checkpoint_every=4") for a in splat_args(tiny_pipeline_dir, run_dir)]
    proc = start(args)
    wait_for_checkpoint(proc, run_dir, 4, timeout=300)
    proc.kill()  # no graceful stop: what is on disk is the periodic checkpoint
    proc.communicate(timeout=60)
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert killed_at in (4, 8, 12)
    again = launch([sys.executable, str(REPO / "launch.py"), f"resume={run_dir}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert same_weights(run_dir / "checkpoints" / "last.ckpt", straight / "checkpoints" / "last.ckpt")


def test_the_export_writes_a_3dgs_ply_that_reads_back_field_by_field_and_starts_a_run(straight, tiny_pipeline_dir,
                                                                                      tmp_path):
    from plyfile import PlyData

    done = launch([sys.executable, str(REPO / "launch.py"), "mode=export", f"resume={straight}"])
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    ply = PlyData.read(str(straight / "splats" / "splats.ply"))
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                     "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype in ("float32", "<f4", "f4") or str(p.val_dtype).endswith("f4") for p in v.properties)

    def column(*fields):
        return torch.from_numpy(np.stack([np.asarray(v[f]) for f in fields], axis=1))

    assert torch.equal(column("x", "y", "z"), state["geometry.means"])
    assert torch.equal(column("f_dc_0", "f_dc_1", "f_dc_2"), state["geometry.sh_dc"])
    assert torch.equal(column("opacity")[:, 0], state["geometry.opacity_logits"])
    assert torch.equal(column("scale_0", "scale_1", "scale_2"), state["geometry.log_scales"])
    quats = torch.nn.functional.normalize(state["geometry.quats"], dim=-1)
    assert torch.allclose(column("rot_0", "rot_1", "rot_2", "rot_3"), quats, atol=1e-7)
    assert (straight / "mesh" / "mesh.glb").is_file()  # and the mesh of the splats' density

    # the file starts a run: its Gaussians are the run's first (nothing trains at learning rate 0)
    run_dir = tmp_path / "from-ply"
    again = launch([*splat_args(tiny_pipeline_dir, run_dir)[:-1], f"hydra.run.dir={run_dir}", "trainer.max_steps=1",
                    f"geometry.init_ply={straight / 'splats' / 'splats.ply'}", "system.optimizer.lr.geometry=0",
                    "geometry.densify_from=100"])
    assert again.returncode == 0, again.stderr[-3000:]
    loaded = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name in ("means", "log_scales", "opacity_logits", "sh_dc"):
        assert torch.equal(loaded[f"geometry.{name}"], state[f"geometry.{name}"]), name


@pytest.mark.parametrize("prior", ["tiny-sd", "shapes"])
@pytest.mark.parametrize("guidance", ["paas", "sds", "ssd", "vsd"])
def test_every_guidance_trains_the_splats(guidance, prior, tiny_pipeline_dir, tmp_path):
    """system=gaussian for two steps with each guidance, on the embedded shapes prior and on the
    tiny SD-format pipeline: the guidance's gradient reaches the centres, scales, opacities and
    colours through the splatter."""
    from scorelift.builders import build_named
    from scorelift.run import checkpoint_path, run
    from tests.run.test_system import compose_cfg

    if prior == "shapes":
        over = ["prior=shapes", "system.views.n_frames=2", "data.batch_size=2", "geometry.n_gaussians=300"]
    else:
        over = ["prior=stable-diffusion", f"prior.model={tiny_pipeline_dir}", "data.height=16", "data.width=16",
                "system.views.resolution=16", "system.views.n_frames=2", "geometry.n_gaussians=300",
                "geometry.init_scale=0.06", "geometry.init_opacity=0.5"]
    cfg = compose_cfg(["system=gaussian", f"guidance={guidance}", "trainer.max_steps=2", "device=cpu",
                       "trainer.progress_bar=false", "evaluators=[]", *over])
    run(cfg, tmp_path)
    state = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert state["global_step"] == 2
    first = build_named("geometry", "gaussians", {k: v for k, v in cfg.geometry.items() if k != "type"})
    for name in ("means", "log_scales", "opacity_logits", "sh_dc"):
        assert not torch.equal(state["state_dict"][f"geometry.{name}"], getattr(first, name)), name


def test_dreamgaussian_refines_a_mesh_started_from_the_splats(tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "job"
    args = splat_args(tiny_pipeline_dir, run_dir, "stages.mesh.geometry.resolution=8",
                      "stages.mesh.geometry.feature_resolution=8", "stages.mesh.trainer.max_steps=4", system="dreamgaussian")
    args = [a for a in args if not a.startswith("geometry.")]
    args += [f"stages.splats.{a}" for a in splat_args(tiny_pipeline_dir, run_dir) if a.startswith("geometry.")]
    done = launch(args)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["splats", "mesh"]
    mesh_cfg = yaml.safe_load((run_dir / "mesh" / "config.yaml").read_text())
    assert (mesh_cfg["geometry"]["type"], mesh_cfg["renderer"]["type"]) == ("dmtet", "rasterizer")
    assert "Started the DMTetGeometry from the density field of" in (run_dir / "mesh" / "launch.log").read_text()
    state = torch.load(run_dir / "mesh" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4
