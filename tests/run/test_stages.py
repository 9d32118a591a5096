"""Staged runs (``system=magic3d``): a coarse density field, then a DMTet mesh started from it,
as two runs in one run folder. Real launches on the tiny Stable-Diffusion pipeline: the stages run
in turn with their budgets, the mesh stage starts from the coarse stage's checkpoint, a SIGTERM in
the mesh stage resumes there to the uninterrupted job's weights, and ``--cfg job`` shows every
stage."""

from __future__ import annotations

import json
import signal
import sys

import pytest
import torch
import yaml

from tests.launching import REPO, launch, same_weights, start, wait_for_checkpoint

pytestmark = pytest.mark.subprocess

FINE_STEPS = 30


def job_args(pipeline, run_dir, *extra: str) -> list[str]:
    """A magic3d job on the tiny pipeline (8 x 8 latents, 16 x 16 pixels): a 12^3 voxel grid that
    starts dense (so that the few coarse steps leave a surface), then an 8-cell DMTet."""
    return [sys.executable, str(REPO / "launch.py"), "system=magic3d", "prior=stable-diffusion", f"prior.model={pipeline}",
            "device=cpu", "evaluators=[]", "trainer.progress_bar=false", "trainer.checkpoint_every=2",
            "data.height=16", "data.width=16", "system.views.resolution=16", "system.views.n_frames=2",
            "trainer.max_steps=10", "stages.coarse.geometry.resolution=12", "stages.coarse.geometry.bbox_radius=1.0",
            "stages.coarse.geometry.density_init=2.0", "stages.coarse.renderer.step_size=0.04",
            "stages.fine.geometry.resolution=8", "stages.fine.geometry.feature_resolution=8",
            f"stages.fine.trainer.max_steps={FINE_STEPS}", f"hydra.run.dir={run_dir}", *extra]


def invocations(run_dir) -> list[dict]:
    return json.loads((run_dir / "run_info.json").read_text())["invocations"]


@pytest.fixture(scope="module")
def straight(tiny_pipeline_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("magic3d") / "job"
    done = launch(job_args(tiny_pipeline_dir, run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


def test_the_stages_run_in_turn_each_a_run_of_its_own(straight):
    run_dir, done = straight
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["coarse", "fine"]
    coarse, fine = run_dir / "coarse", run_dir / "fine"
    for stage in (coarse, fine):
        assert [i["status"] for i in invocations(stage)] == ["finished"]
        assert (stage / "turntable.mp4").is_file() and (stage / "grid.png").is_file()
    # the job's budget split by the shares (0.6 / 0.4), and a stage's own setting on top
    assert torch.load(coarse / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert torch.load(fine / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == FINE_STEPS
    coarse_cfg = yaml.safe_load((coarse / "config.yaml").read_text())
    fine_cfg = yaml.safe_load((fine / "config.yaml").read_text())
    assert (coarse_cfg["geometry"]["type"], coarse_cfg["renderer"]["type"]) == ("voxel-grid", "volume")
    assert (fine_cfg["geometry"]["type"], fine_cfg["renderer"]["type"]) == ("dmtet", "rasterizer")
    assert fine_cfg["system"]["name"] == "magic3d-fine" and fine_cfg["geometry"]["resolution"] == 8
    assert "Started the DMTetGeometry from the density field of" in (fine / "launch.log").read_text()
    # the job's top holds what readers of a one-stage run look for, over both stages
    timing = json.loads((run_dir / "timing.json").read_text())
    parts = [json.loads((stage / "timing.json").read_text()) for stage in (coarse, fine)]
    assert timing["steps_timed"] == sum(p["steps_timed"] for p in parts)
    assert timing["train_steps_s"] == pytest.approx(sum(p["train_steps_s"] for p in parts))
    assert set(timing["stages"]) == {"coarse", "fine"}
    assert (run_dir / "turntable.mp4").read_bytes() == (fine / "turntable.mp4").read_bytes()
    # the job's command line is saved for resume=, and a stage's for resuming that stage alone
    assert "system=magic3d" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert "system=magic3d-fine" in yaml.safe_load((fine / ".hydra" / "overrides.yaml").read_text())


def test_the_mesh_stage_starts_from_the_coarse_stages_density_at_the_export_level(straight):
    """The fine stage's first step: signed distance sdf_scale * (level - density) at the grid's
    vertices, with the export's automatic level of the coarse field (scorelift.outputs.mesh)."""
    from scorelift.builders import build_named
    from scorelift.init_from import part_state
    from scorelift.outputs.mesh import pick_threshold, sample_density

    run_dir, _ = straight
    coarse_cfg = yaml.safe_load((run_dir / "coarse" / "config.yaml").read_text())
    fine_cfg = yaml.safe_load((run_dir / "fine" / "config.yaml").read_text())
    field = build_named("geometry", "voxel-grid", {k: v for k, v in coarse_cfg["geometry"].items() if k != "type"})
    state = torch.load(run_dir / "coarse" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    field.load_state_dict(part_state(state, "geometry"))
    mesh = build_named("geometry", "dmtet", {k: v for k, v in fine_cfg["geometry"].items() if k != "type"})
    density, lo, spacing = sample_density(field, 128)
    level = pick_threshold(density, "auto", lo, spacing)
    mesh.init_from(field, level)
    expected = mesh.cfg.sdf_scale * (level - field.density(mesh.grid_vertices))
    assert torch.allclose(mesh.sdf, expected)
    vertices, faces = mesh.mesh()
    assert faces.shape[0] > 0  # a surface to refine
    # the preset's features start as what the field renders along each feature point's normal
    assert fine_cfg["geometry"]["feature_init"] == "rendered"
    from scorelift.plugins.geometry.dmtet import rendered_features

    R, r = mesh.cfg.feature_resolution, mesh.cfg.bbox_radius
    axis = torch.linspace(-r, r, R)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    with torch.no_grad():
        shown = rendered_features(field, points, mesh.cfg.init_depth, 2.0 * r / (R - 1))
        got = mesh(points).features
    assert torch.allclose(got, mesh.activate(mesh.inverse_activation(shown)), atol=1e-5)


def test_a_stop_in_the_mesh_stage_resumes_there_to_the_uninterrupted_weights(straight, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "job"
    proc = start(job_args(tiny_pipeline_dir, run_dir))
    wait_for_checkpoint(proc, run_dir / "fine", 4, timeout=300)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    assert "scorelift: stopped:" in stderr
    assert [i["status"] for i in invocations(run_dir / "coarse")] == ["finished"]
    assert invocations(run_dir / "fine")[-1]["status"] == "stopped"

    again = launch([sys.executable, str(REPO / "launch.py"), f"resume={run_dir}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Stage 1 of 2 (coarse) finished before" in again.stderr
    assert [i["status"] for i in invocations(run_dir / "coarse")] == ["finished"]  # not run again
    assert [i["status"] for i in invocations(run_dir / "fine")] == ["stopped", "finished"]
    uninterrupted, _ = straight
    assert same_weights(run_dir / "fine" / "checkpoints" / "last.ckpt", uninterrupted / "fine" / "checkpoints" / "last.ckpt")
    assert same_weights(run_dir / "coarse" / "checkpoints" / "last.ckpt", uninterrupted / "coarse" / "checkpoints" / "last.ckpt")


def test_cfg_job_shows_every_stage(tiny_pipeline_dir, tmp_path):
    shown = launch([*job_args(tiny_pipeline_dir, tmp_path / "job")[:2], "--cfg", "job",
                    *job_args(tiny_pipeline_dir, tmp_path / "job")[2:]])
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "# stage 1 of 2: coarse" in shown.stdout and "# stage 2 of 2: fine" in shown.stdout
    first, second = shown.stdout.split("# stage 2 of 2: fine")
    assert "type: voxel-grid" in first and "type: dmtet" in second and "type: rasterizer" in second
    assert not (tmp_path / "job").exists()


def test_mode_export_of_a_staged_run_writes_the_mesh_stages_own_surface(straight):
    """The last stage's mesh, loaded back with trimesh: watertight, one piece, under 50k faces."""
    import trimesh

    run_dir, _ = straight
    done = launch([sys.executable, str(REPO / "launch.py"), "mode=export", f"resume={run_dir}"])
    assert done.returncode == 0, done.stderr[-3000:]
    mesh = trimesh.load(run_dir / "fine" / "mesh" / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.faces) <= 50_000
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert not (run_dir / "coarse" / "mesh").exists()
    assert "the geometry's own surface" in (run_dir / "fine" / "launch.log").read_text()


@pytest.mark.parametrize("prior", ["tiny-sd", "shapes"])
@pytest.mark.parametrize("guidance", ["paas", "sds", "ssd", "vsd"])
def test_every_guidance_trains_the_mesh(guidance, prior, tiny_pipeline_dir, tmp_path):
    """The mesh stage alone (system=magic3d-fine, from its starting sphere) for two steps with each
    guidance, on the embedded shapes prior and on the tiny SD-format pipeline: the guidance's
    gradient reaches the signed distance and the features through the rasteriser."""
    from scorelift.run import checkpoint_path, run
    from tests.run.test_system import compose_cfg

    if prior == "shapes":
        over = ["prior=shapes", "system.views.n_frames=2", "data.batch_size=2", "geometry.resolution=16",
                "geometry.feature_resolution=16"]
    else:
        over = ["prior=stable-diffusion", f"prior.model={tiny_pipeline_dir}", "data.height=16", "data.width=16",
                "system.views.resolution=16", "system.views.n_frames=2", "geometry.resolution=8",
                "geometry.feature_resolution=8", "geometry.init_radius=0.6"]
    cfg = compose_cfg(["system=magic3d-fine", f"guidance={guidance}", "trainer.max_steps=2", "device=cpu",
                       "trainer.progress_bar=false", "evaluators=[]", "system.optimizer.lr.geometry=0.05", *over])
    run(cfg, tmp_path)
    state = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert state["global_step"] == 2
    from scorelift.builders import build_named

    start = build_named("geometry", "dmtet", {k: v for k, v in cfg.geometry.items() if k != "type"})
    for name in ("sdf", "feature_grid"):
        assert not torch.equal(state["state_dict"][f"geometry.{name}"], getattr(start, name)), name


def test_the_benchmark_reports_a_staged_method_with_a_row_per_stage(tiny_pipeline_dir, tmp_path):
    """A benchmark cell of system=magic3d: its own row (the last stage's quality, both stages'
    time), and one row per stage, "<method>/<stage>", in results.csv and the report."""
    import csv
    import subprocess

    preset = tmp_path / "staged.yaml"
    args = job_args(tiny_pipeline_dir, tmp_path / "unused")[2:]
    method = [a for a in args if a.startswith(("system=", "stages.", "data.", "system.views"))]
    preset.write_text(json.dumps({
        "description": "one staged cell on the tiny pipeline", "prompts": ["a red cube"], "seeds": [0], "steps": 10,
        "eval_every": 0, "common": ["prior=stable-diffusion", f"prior.model={tiny_pipeline_dir}", "device=cpu"],
        "methods": {"mesh": method},
    }))
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "scorelift.benchmark", str(preset), "--out", str(out),
                           "--threads-per-run", "1"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    with open(out / "results.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"mesh", "mesh/coarse", "mesh/fine"} and all(r["status"] == "ok" for r in rows.values())
    assert rows["mesh/fine"]["run_dir"] == "cells/mesh/a_red_cube/s0/run/fine"
    # the cell's time is both stages'; its quality is the last stage's (the shapes-world evaluator)
    assert float(rows["mesh"]["train_steps_s"]) == pytest.approx(
        float(rows["mesh/coarse"]["train_steps_s"]) + float(rows["mesh/fine"]["train_steps_s"]), rel=1e-6)
    assert rows["mesh"]["iou"] == rows["mesh/fine"]["iou"] != ""
    report = (out / "report.md").read_text()
    assert "mesh/coarse" in report and "mesh/fine" in report
